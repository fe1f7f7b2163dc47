"""The read path: which bytes of a remote file to fetch, when, and where they wait.

    reader      the facade: snapshot, plan, fetch or stream, copy (and the lock order)
    cursor      one open file's position, history, stream, pending fetch and layout
    policy      the plan as pure functions, and the knobs (ReadPolicy)
    cost        what a request and a byte cost now, on this link and budget (pure)
    link        the link and the kernel's read-ahead as this mount measures them
    lookup      where a unit is held (RAM, pending writes, spool, disk): the one way to them
    tiff        the layout of a TIFF from cached bytes
    remote      RemoteFile, and a file cut into units (blocks, pieces)
    fetches     single-flight, batched ranged fetches, each unit handed over as it arrives
    streams     sequential streams with flow control
    hotset      recent blocks in RAM
    writebehind blocks waiting for the disk cache, and the writer thread
    spool       the unlinked file that holds stream blocks until written
    diskahead   cached blocks verified ahead of a sequential re-read
    sharedtier  a second cache level in Redis shared by a cluster's nodes (cache.shared)
    sharedfetch one fetch per unit across the cluster (claims in Redis)
"""
from terrafs.read.policy import ReadPolicy
from terrafs.read.reader import Reader
from terrafs.read.remote import RemoteFile

__all__ = ["ReadPolicy", "Reader", "RemoteFile"]
