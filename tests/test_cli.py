"""The command line: version, cache, prefetch, login (device flow), no-password mounts."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time

from mounting import credentials_env, write_config


def terrafs(*args, env=None, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "terrafs", *args], capture_output=True, text=True,
                          env=env or credentials_env(), timeout=timeout, **kw)


def test_version():
    from terrafs import __version__

    out = terrafs("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"terrafs {__version__}"


def test_cache_stats_prefetch_and_clear(emulator, mount_factory):
    mount = mount_factory(emulator)
    product = next((mount.path / "terrascope-s2-toc-v2/2020/01/02").iterdir())
    total = sum(f.stat().st_size for f in product.iterdir() if f.is_file())
    out = terrafs("prefetch", "--config", str(mount.config), str(product))
    assert out.returncode == 0, out.stderr
    assert "prefetched" in out.stdout
    emulator.mark()
    for f in product.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                fh.read()
    gets = [r for r in emulator.requests("download") if r["method"] == "GET"]
    assert gets == [], "reads after prefetch still reached the server"
    stats = terrafs("cache", "stats", "--config", str(mount.config))
    assert stats.returncode == 0, stats.stderr
    size = re.search(r"size:\s+([\d.]+) (\w+)", stats.stdout)
    assert size and float(size.group(1)) > 0, stats.stdout
    assert re.search(r"hit rate:\s+[\d.]+%", stats.stdout)
    assert total > 0
    mount.stop()
    cleared = terrafs("cache", "clear", "--config", str(mount.config))
    assert cleared.returncode == 0, cleared.stderr
    after = terrafs("cache", "stats", "--config", str(mount.config))
    assert re.search(r"blocks:\s+0\b", after.stdout), after.stdout


def test_prefetch_refuses_paths_outside_a_mount(tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", tmp_path / "cache")
    out = terrafs("prefetch", "--config", str(config), str(tmp_path / "plain.txt"))
    assert out.returncode != 0 and "not a file of a terrafs mount" in out.stderr


def test_login_keeps_only_a_refresh_token_and_a_mount_needs_no_password(emulator, mount_factory, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    env = credentials_env()
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        env.pop(key)
    env["HOME"] = str(home)
    emulator.set(device_interval=0.2)
    proc = subprocess.Popen([sys.executable, "-m", "terrafs", "login", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    shown = []

    def read_output():
        for line in proc.stdout:
            shown.append(line)

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    code = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and code is None:
        code = next((m.group(1) for line in shown for m in [re.search(r"\b([A-Z0-9]{4}-[A-Z0-9]{4})\b", line)] if m),
                    None)
        time.sleep(0.1)
    assert code, f"no user code shown: {shown}"
    emulator.approve_device(code)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    token_file = home / ".config/terrafs/refresh-token"
    assert token_file.exists()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The mount runs with no password at all.
    mount = mount_factory(emulator, env=env)
    f = next(mount.path.rglob("*B02_10M*.tif"))
    with open(f, "rb") as fh:
        assert len(fh.read()) == f.stat().st_size
    assert "demo" not in " ".join(open(f"/proc/{mount.proc.pid}/cmdline").read().split("\0"))


def test_no_credentials_at_all_is_one_clear_line(emulator, tmp_path):
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    env = credentials_env()
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        env.pop(key)
    env["HOME"] = str(tmp_path)
    (tmp_path / "mnt").mkdir()
    out = terrafs("mount", "--config", str(config), str(tmp_path / "mnt"), env=env)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "no credentials" in out.stderr, out.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_prompt_on_a_terminal_does_not_echo_the_password(emulator, tmp_path):
    secret = "typed-Pa55word-not-echoed"
    emulator.set(users={"demo": "demo", "bob": secret})
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = credentials_env()
    for key in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD"):
        env.pop(key)
    env["HOME"] = str(tmp_path)
    # `script` gives the command a terminal and passes our stdin to it.
    command = f"{sys.executable} -m terrafs mount --config {config} {mnt}"
    proc = subprocess.Popen(["script", "-qec", command, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        time.sleep(1.5)
        proc.stdin.write(b"bob\n")
        proc.stdin.flush()
        time.sleep(0.5)
        proc.stdin.write(secret.encode() + b"\n")
        proc.stdin.flush()
        transcript = proc.communicate(timeout=60)[0].decode(errors="replace")
        assert proc.returncode == 0, transcript
        assert os.path.ismount(mnt), transcript
        assert "password" in transcript.lower()
        assert secret not in transcript
    finally:
        terrafs("umount", str(mnt))


def test_log_filter_redacts_password_and_tokens():
    import logging

    from terrafs.cli.main import RedactSecrets

    f = RedactSecrets()
    f.secrets.add("hunter22")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s with %s failed", ("hunter22",
                               "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.c2ln"), None)
    assert f.filter(record)
    text = record.getMessage()
    assert "hunter22" not in text and "eyJhbGci" not in text
    assert text == "auth <secret> with <token> failed"


def test_prefetch_check_into_a_closed_pipe_ends_quietly(emulator, mount_factory):
    """`terrafs prefetch --check DIR | head -1`: the reader left, the daemon did not."""
    mount = mount_factory(emulator)
    day = mount.path / "terrascope-s2-toc-v2/2020/01/01"
    for lines in (1, None):  # one product's files (stdout written at the end), the day's (written as it goes)
        target = next(day.iterdir()) if lines else day
        proc = subprocess.Popen([sys.executable, "-m", "terrafs", "prefetch", "--check", "--config",
                                 str(mount.config), str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=credentials_env())
        proc.stdout.close()  # as `head` does once it has its line
        _, err = proc.communicate(timeout=120)
        assert err.decode() == "", f"a closed stdout was reported: {err.decode()}"
        assert proc.returncode == 141, f"exit {proc.returncode}, not a quiet end on SIGPIPE's status"
    out = terrafs("prefetch", "--check", "--config", str(mount.config), str(day))
    assert out.returncode == 0 and out.stdout.count("\n") > 1, "the mount's daemon no longer answers --check"


def test_a_second_umount_says_not_mounted(emulator, mount_factory):
    mount = mount_factory(emulator)
    first = terrafs("umount", str(mount.path))
    assert first.returncode == 0, first.stderr
    mount.proc.wait(timeout=30)
    second = terrafs("umount", str(mount.path))
    assert second.returncode != 0
    assert second.stderr.strip() == f"terrafs: {mount.path.resolve()} is not mounted", second.stderr
