"""Import graph of terrafs (all imports: top, function-level, TYPE_CHECKING); prints edges and cycles.

Usage: python3 scripts/house/import_cycles.py REPO_ROOT   (docs/house-plan.md, section 2)
"""
import ast, sys, os, json
root = sys.argv[1]
mods = {}
for d, _, fs in os.walk(os.path.join(root, 'terrafs')):
    for f in fs:
        if f.endswith('.py'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].replace('/', '.')
            if rel.endswith('.__init__'): rel = rel[:-9]
            mods[rel] = p
def resolve(name):
    while name and name not in mods:
        name = name.rpartition('.')[0]
    return name or None
edges = {}
where = {}
for m, p in mods.items():
    tree = ast.parse(open(p).read())
    pkg = m if p.endswith('__init__.py') else m.rpartition('.')[0]
    # find kind per node
    def visit(node, kind):
        for ch in ast.iter_child_nodes(node):
            k = kind
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)): k = 'func'
            if isinstance(ch, ast.If) and 'TYPE_CHECKING' in ast.unparse(ch.test): k = 'typecheck'
            targets = []
            if isinstance(ch, ast.Import):
                targets = [a.name for a in ch.names]
            elif isinstance(ch, ast.ImportFrom):
                base = ch.module or ''
                if ch.level:
                    parts = pkg.split('.')
                    parts = parts[:len(parts) - (ch.level - 1)]
                    base = '.'.join(parts + ([base] if base else []))
                targets = [base + '.' + a.name if (base + '.' + a.name) in mods else base for a in ch.names]
            for t in targets:
                r = resolve(t) if t.startswith('terrafs') else None
                if r and r != m:
                    edges.setdefault(m, set()).add(r)
                    where.setdefault((m, r), []).append(f'{p}:{ch.lineno}({k})')
            visit(ch, k)
    visit(tree, 'top')
# Tarjan SCC
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in mods:
    if v not in idx: sc(v)
# elementary cycles (small): find all simple cycles within SCCs via DFS
def cycles(comp):
    comp = set(comp); out = []
    nodes = sorted(comp)
    for i, s in enumerate(nodes):
        allowed = set(nodes[i:])
        def dfs(v, path):
            for w in sorted(edges.get(v, ())):
                if w == s: out.append(path[:])
                elif w in allowed and w not in path and len(path) < 8: dfs(w, path + [w])
        dfs(s, [s])
    return out
if '--edges' in sys.argv:
    for (a, b), ws in sorted(where.items()):
        print(a, '->', b, ' '.join(ws))
print('SCCs:', sccs)
for comp in sccs:
    for cyc in cycles(comp):
        print('CYCLE', ' -> '.join(cyc + [cyc[0]]))
        for a, b in zip(cyc, cyc[1:] + [cyc[0]]):
            print('    ', a, '->', b, where[(a, b)])
# package-ish: also list package __init__ re-export edges
