"""The shared block tier: a second cache level in Redis that every node of a cluster reads and fills.

`cache: {shared: redis://HOST:PORT/DB}` (rediss:// for TLS) makes each node look
here after its RAM and disk and before the download service (lookup.py asks
`get`), and put here what it fetched (`put`, from sharedfetch.py and, for
whole-file streams up to `shared_stream_max`, from the reader's store).

Keys (prefix terrafs:tier), in the manner of mountpoint-s3's shared cache
(object key + ETag, checksummed blocks):
  p:<sha(url)>                  the version the cluster serves: <vid><[url, etag, last-modified]>
  b:<vid>:<unit>:<index>        an entry: header [url, size, etag, last-modified], CRC-32, the bytes
  s:<vid>                       a version some node saw replaced (stale), kept `STALE_DAYS`
  c:<sha(url)>:<size>:<unit>:<index>  a claim on a fetch (sharedfetch.py)
vid is the SHA-1 of [url, etag, last-modified] (of [url, size] where the server gives
neither). Every read of an entry checks, in one server-side step, the pointer and
that its version is not stale, then here the entry's header against the pointer,
the node's own idea of the file's version, the size, length and CRC. Anything
missing, evicted, damaged, of another version, or a Redis that does not answer, is
a miss: never an error. Entries and pointers expire after `shared_ttl`; the byte
budget is the Redis server's (maxmemory with an LRU policy, see the README).

Identity: the identity guard (identity.py) records each version it sees through
`SharedMeta`, which also publishes it here: a node whose response names another
version than the pointer marks the pointer's version stale. A node then drops
what it holds of a stale version at the next open (`stale`), so once any node
has seen a new version, no node serves the old one's bytes from any level.

Redis away: one warning, reads go on (RAM, disk, network); a try every
RETRY_EVERY seconds; one warning when it answers again.

Must not: fetch from the download service, decide what a read fetches, or let a
Redis fault reach a read. Puts run on a writer thread, never on a read's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

try:
    import redis
except ImportError:  # the cluster extra is not installed: mount.make_shared_tier says so if one is named
    redis = None  # type: ignore[assignment]

from terrafs.counters import Counters
from terrafs.read.remote import RemoteFile, Units
from terrafs.read.stats import SharedTierStats

if TYPE_CHECKING:
    from terrafs.cache.filemeta import FileMeta

log = logging.getLogger(__name__)

PREFIX = "terrafs:tier"
RETRY_EVERY = 5.0  # seconds between tries of a Redis that went away
STALE_DAYS = 30  # how long a replaced version stays marked (longer than local caches keep blocks unread)
WRITE_QUEUE_BYTES = 64 << 20  # puts waiting for the writer; more are dropped (a later read fetches them)
_MEMO_MAX = 100_000  # files whose version is remembered in RAM
_MAGIC = b"TFT1"
_HEAD = struct.Struct(">4sII")  # magic, header length, CRC-32 of the bytes

# KEYS: pointer. ARGV: prefix, suffix ":<unit>:<index>". -> false | {pointer, entry or false}
_GET = """
local p = redis.call('GET', KEYS[1])
if not p then return false end
local vid = string.sub(p, 1, 40)
if redis.call('EXISTS', ARGV[1] .. ':s:' .. vid) == 1 then return false end
return {p, redis.call('GET', ARGV[1] .. ':b:' .. vid .. ARGV[2])}
"""
# KEYS: pointer, claim (or ""). ARGV: prefix, vid, pointer value, suffix, entry, ttl ms. -> 1 stored, 0 not
_PUT = """
local function unclaim() if KEYS[2] ~= '' then redis.call('DEL', KEYS[2]) end end
if redis.call('EXISTS', ARGV[1] .. ':s:' .. ARGV[2]) == 1 then unclaim() return 0 end
local p = redis.call('GET', KEYS[1])
if not p then redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[6])
elseif string.sub(p, 1, 40) ~= ARGV[2] then unclaim() return 0
else redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
redis.call('SET', ARGV[1] .. ':b:' .. ARGV[2] .. ARGV[4], ARGV[5], 'PX', ARGV[6])
unclaim()
return 1
"""
# KEYS: pointer. ARGV: prefix, vid, pointer value, ttl ms, stale seconds. -> 'stale' | 'same' | 'moved'
_PUBLISH = """
if redis.call('EXISTS', ARGV[1] .. ':s:' .. ARGV[2]) == 1 then return 'stale' end
local p = redis.call('GET', KEYS[1])
local answer = 'same'
if p and string.sub(p, 1, 40) ~= ARGV[2] then
  redis.call('SET', ARGV[1] .. ':s:' .. string.sub(p, 1, 40), '1', 'EX', ARGV[5])
  answer = 'moved'
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return answer
"""


@dataclass(frozen=True)
class TierSettings:
    url: str  # redis(s)://...; may hold a password: never logged (see `where`)
    ttl: float = 86400.0  # seconds an entry lives unread
    stream_max: int = 64 << 20  # whole-file streams go in only for files up to this size
    wait: float = 30.0  # most seconds a node waits for another's claimed fetch


Version = tuple[Any, Any]  # (etag, last_modified) as the identity guard records them


def version_id(url: str, size: int, version: Version | None) -> str:
    etag, modified = version if version is not None else (None, None)
    ident = [url, etag, modified] if (etag, modified) != (None, None) else [url, size]
    return hashlib.sha1(json.dumps(ident).encode()).hexdigest()


def _url_key(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def pack(f: RemoteFile, version: Version | None, data: bytes) -> bytes:
    etag, modified = version if version is not None else (None, None)
    head = json.dumps([f.url, f.size, etag, modified]).encode()
    return _HEAD.pack(_MAGIC, len(head), zlib.crc32(data)) + head + data


def unpack(entry: bytes) -> tuple[list, memoryview] | None:
    """(header, bytes) of an entry whose CRC holds, else None (hostile input: anything may be here)."""
    if len(entry) < _HEAD.size:
        return None
    magic, n, crc = _HEAD.unpack_from(entry)
    if magic != _MAGIC or _HEAD.size + n > len(entry):
        return None
    try:
        head = json.loads(entry[_HEAD.size:_HEAD.size + n])
    except ValueError:
        return None
    data = memoryview(entry)[_HEAD.size + n:]
    if not isinstance(head, list) or len(head) != 4 or zlib.crc32(data) != crc:
        return None
    return head, data


class SharedTier:
    """The tier of one process; thread-safe. `bind(cache)` before use (the reader's disk cache)."""

    def __init__(self, settings: TierSettings, *, retry_every: float = RETRY_EVERY):
        from terrafs.remote.ratelimit_redis import redact_redis_url, redis_client

        self.settings = settings
        self.where = redact_redis_url(settings.url)
        self._client = redis_client(settings.url)
        self._get = self._client.register_script(_GET)
        self._put = self._client.register_script(_PUT)
        self._publish = self._client.register_script(_PUBLISH)
        self._retry_every = retry_every
        self._lock = threading.Lock()
        self._away_until = 0.0  # monotonic; > now: Redis is away, don't try
        self._away = False
        self._back = 0  # times Redis was seen back after being away
        self._meta: FileMeta | None = None
        self._versions: dict[str, Version | None] = {}  # url -> the version this node holds (memo of the meta)
        self._asked: dict[str, float] = {}  # url -> when a read last asked whether its version is stale
        self.counts = Counters(**{"shared_hits": 0, "shared_misses": 0, "shared_bytes_read": 0, "shared_puts": 0,
                       "shared_bytes_written": 0, "shared_waits": 0, "shared_wait_seconds": 0.0,
                       "shared_claims": 0, "shared_stale_dropped": 0, "shared_corrupt": 0})
        self._queue: queue.Queue = queue.Queue()
        self._queued = 0
        self._writer = threading.Thread(target=self._write_loop, name="terrafs-shared-tier", daemon=True)
        self._writer.start()
        self._check_server()

    def _check_server(self) -> None:
        """Warn about a Redis that would fill up instead of evicting (the tier's byte budget is its maxmemory)."""
        got = self.call(lambda: self._client.config_get("maxmemory*"), {}) or {}
        text = {str(k, "utf-8", "replace") if isinstance(k, bytes) else k:
                str(v, "utf-8", "replace") if isinstance(v, bytes) else str(v) for k, v in got.items()}
        if text and (text.get("maxmemory") == "0" or text.get("maxmemory-policy") == "noeviction"):
            log.warning("the shared tier's Redis at %s has maxmemory %s and policy %s: give it a byte budget "
                        "with an allkeys LRU policy (see the README), or it grows until it refuses writes",
                        self.where, text.get("maxmemory"), text.get("maxmemory-policy"))

    def bind(self, meta: FileMeta) -> None:
        """The identity records (filemeta.py) that say which version of each file this node holds."""
        self._meta = meta

    # -- Redis, guarded ---------------------------------------------------------

    def call(self, what: Callable[[], Any], default: Any = None) -> Any:
        """what() against Redis; `default` (a miss) if Redis is away or fails. Never raises a Redis error."""
        if self._away and time.monotonic() < self._away_until:
            return default
        began = self._back  # a call that began before Redis was seen back fails as part of the old outage
        try:
            result = what()
        except redis.ResponseError as exc:  # e.g. OOM under a noeviction policy: this call only
            log.debug("shared tier at %s refused a command: %s", self.where, exc)
            return default
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                if began != self._back:
                    return default
                self._away_until = time.monotonic() + self._retry_every
                if not self._away:
                    self._away = True
                    log.warning("the shared tier at %s cannot be reached (%s); reads go on without it, "
                                "tried again every %.0f s", self.where, type(exc).__name__, self._retry_every)
            return default
        if self._away:
            with self._lock:
                if self._away:
                    self._away = False
                    self._back += 1
                    log.warning("the shared tier at %s answers again; in use again", self.where)
        return result

    @property
    def available(self) -> bool:
        return not self._away or time.monotonic() >= self._away_until

    # -- versions ---------------------------------------------------------------

    def version(self, url: str) -> Version | None:
        """The version of url this node holds (None: none recorded)."""
        try:
            return self._versions[url]
        except KeyError:
            pass
        v = self._meta.identity(url) if self._meta is not None else None
        if len(self._versions) > _MEMO_MAX:
            self._versions.clear()  # a memo: the meta records stay
        self._versions[url] = v  # type: ignore[assignment]
        return v  # type: ignore[return-value]

    def recorded(self, url: str, version: Version, size: int | None) -> None:
        """The identity guard recorded `version` of url (a response that is the file): tell the cluster."""
        self._versions[url] = version
        vid = version_id(url, size or 0, version)
        pointer = vid + json.dumps([url, *version])
        ttl = int(self.settings.ttl * 1000)
        answer = self.call(lambda: self._publish(keys=[f"{PREFIX}:p:{_url_key(url)}"],
                                                 args=[PREFIX, vid, pointer, ttl, STALE_DAYS * 86400]))
        if answer == b"moved":
            log.info("%s: a new version; the cluster's copies of the old one are marked stale", url)

    def stale(self, f: RemoteFile, every: float = 0.0) -> bool:
        """Whether another node saw the version of f held here replaced; then it is forgotten here
        (the caller drops its bytes), so the next response of the file is its first version.
        every > 0: ask Redis at most that often per file (a read's check; an open asks always)."""
        v = self.version(f.url)
        if v is None:
            return False
        now = time.monotonic()
        if every > 0:
            if now - self._asked.get(f.url, -every) < every:
                return False
            if len(self._asked) > _MEMO_MAX:
                self._asked.clear()
            self._asked[f.url] = now
        if not self.call(lambda: self._client.exists(f"{PREFIX}:s:{version_id(f.url, f.size, v)}")):
            return False
        log.info("%s changed on the server (another node saw it): dropping what is cached of it", f.url)
        self.counts.add("shared_stale_dropped", 1)
        self._versions[f.url] = None
        if self._meta is not None:
            self._meta.set_identity(f.url, None)
        return True

    # -- entries ----------------------------------------------------------------

    def get(self, u: Units, i: int, count: bool = True) -> bytes | None:
        """Unit i of a file from the tier, verified; None for anything else (counted as a hit or miss)."""
        res = self.call(lambda: self._get(keys=[f"{PREFIX}:p:{_url_key(u.url)}"],
                                          args=[PREFIX, f":{u.unit}:{i}"]))
        found = self._check(u, i, res)
        if not count:
            if found is not None:
                self.counts.add("shared_bytes_read", len(found))
            return found
        if found is None:
            self.counts.add("shared_misses", 1)
            return None
        self.counts.add("shared_hits", 1)
        self.counts.add("shared_bytes_read", len(found))
        return found

    def get_many(self, u: Units, units: list[int]) -> dict[int, bytes]:
        """The units of `units` the tier holds, verified, in one round trip (not counted as hits or misses)."""
        def ask() -> list:
            pipe = self._client.pipeline(transaction=False)
            for i in units:
                self._get(keys=[f"{PREFIX}:p:{_url_key(u.url)}"], args=[PREFIX, f":{u.unit}:{i}"], client=pipe)
            return pipe.execute()

        found: dict[int, bytes] = {}
        for i, res in zip(units, self.call(ask, []) if units else []):
            data = self._check(u, i, res)
            if data is not None:
                found[i] = data
                self.counts.add("shared_bytes_read", len(data))
        return found

    def _check(self, u: Units, i: int, res: Any) -> bytes | None:
        if not isinstance(res, list) or len(res) != 2 or not res[1]:
            return None
        pointer, entry = res
        try:  # what Redis holds is input like any other
            url, etag, modified = json.loads(pointer[40:])
            got = unpack(entry)
        except (ValueError, TypeError, struct.error):
            got = url = etag = modified = None
        if got is None:
            self.counts.add("shared_corrupt", 1)
            log.debug("a damaged shared entry for unit %d of %s: a miss", i, u.url)
            return None
        (e_url, e_size, e_etag, e_modified), data = got
        if (e_url, e_etag, e_modified) != (url, etag, modified) or url != u.url or e_size != u.size \
                or len(data) != u.length(i):
            return None
        mine = self.version(u.url)
        if mine is not None and tuple(mine) != (etag, modified):
            return None  # this node holds another version: the guard sorts out which at its next fetch
        if mine is None and (etag, modified) != (None, None) and self._meta is not None:
            self._versions[u.url] = (etag, modified)  # a later response of another version is then a change
            self._meta.set_identity(u.url, (etag, modified))
        return bytes(data)

    def put(self, u: Units, i: int, data: bytes, claim: str = "") -> None:
        """Offer unit i to the cluster (the writer thread sends it), then release `claim` if given."""
        with self._lock:
            if self._queued + len(data) > WRITE_QUEUE_BYTES:
                full = True
            else:
                full = False
                self._queued += len(data)
        if full:
            if claim:
                self.call(lambda: self._client.delete(claim))
            return
        self._queue.put((u, i, data, claim, self.version(u.url)))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the puts offered so far were sent (or dropped)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            u, i, data, claim, version = item
            with self._lock:
                self._queued -= len(data)
            vid = version_id(u.url, u.size, version)
            etag, modified = version if version is not None else (None, None)
            pointer = vid + json.dumps([u.url, etag, modified])
            entry = pack(u.file, version, data)
            ttl = int(self.settings.ttl * 1000)
            if self.call(lambda: self._put(keys=[f"{PREFIX}:p:{_url_key(u.url)}", claim],
                                           args=[PREFIX, vid, pointer, f":{u.unit}:{i}", entry, ttl])):
                self.counts.add("shared_puts", 1)
                self.counts.add("shared_bytes_written", len(data))

    def stats(self) -> SharedTierStats:
        counts = {k.removeprefix("shared_"): v for k, v in self.counts.snapshot().items()}
        return SharedTierStats(**counts, available=bool(self.available))  # type: ignore[arg-type]

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._client.close()


class SharedMeta:
    """The identity records (filemeta.py), published to the tier as the guard writes them: each new
    version a response names also reaches the cluster (SharedTier.recorded)."""

    def __init__(self, meta: FileMeta, tier: SharedTier):
        self._meta = meta
        self._tier = tier

    def identity(self, url: str) -> Version | None:
        return self._meta.identity(url)

    def set_identity(self, url: str, ident: Version | None) -> None:
        self._meta.set_identity(url, ident)
        if ident is not None:
            self._tier.recorded(url, (ident[0], ident[1]), None)
