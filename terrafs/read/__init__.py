"""The read path: which bytes of a remote file to fetch, when, and where they wait.

    reader      the facade: plan, look up, fetch or stream, copy (and the lock order)
    policy      the plan as pure functions, and the knobs (ReadPolicy)
    tiff        the layout of a TIFF from cached bytes
    remote      RemoteFile, and a file cut into units (blocks, pieces)
    fetches     single-flight, batched ranged fetches
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
