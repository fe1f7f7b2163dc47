"""Private names (a leading underscore) that tests and scripts import from terrafs, or read on project objects (docs/house-plan.md, section 4).

Usage: python3 scripts/house/private_names.py REPO_ROOT

Not listed: dunders (`from terrafs import __version__`), namedtuple's public `_replace` and the like,
and attributes read through a third-party module imported by name (`mfusepy.FUSE._wrapper`, which
test_fs_mfusepy.py pins on purpose): those are no project object's privates.
"""
import ast, sys, os
root = sys.argv[1]
for d in ['tests', 'scripts']:
  for dp, _, fs in os.walk(os.path.join(root, d)):
    for f in sorted(fs):
        p = os.path.join(dp, f)
        if not f.endswith('.py'):
            if d=='scripts':
                try:
                    src=open(p).read()
                    if not src.startswith('#!/usr/bin/env python') and 'python' not in src.split('\n')[0]: continue
                except Exception: continue
            else: continue
        try: t = ast.parse(open(p).read())
        except Exception as e: print('PARSEFAIL', p, e); continue
        rel = os.path.relpath(p, root)
        foreign = {(a.asname or a.name).split('.')[0] for n in ast.walk(t) if isinstance(n, ast.Import)
                   for a in n.names if not a.name.startswith('terrafs')}
        for n in ast.walk(t):
            if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('terrafs'):
                for a in n.names:
                    if a.name.startswith('_') and not (a.name.startswith('__') and a.name.endswith('__')):
                        print(f'IMPORT {rel}:{n.lineno} from {n.module} import {a.name}')
            if isinstance(n, ast.Attribute) and n.attr.startswith('_') and not (n.attr.startswith('__') and n.attr.endswith('__')):
                base = ast.unparse(n.value)
                if base in ('self', 'cls', 'sys', 'os'): continue
                if base.split('.')[0] in foreign: continue
                if n.attr in ('_replace', '_asdict', '_fields', '_make'): continue
                print(f'ATTR {rel}:{n.lineno} {base}.{n.attr}')
