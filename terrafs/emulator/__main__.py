"""`python -m terrafs.emulator [options]`: the emulator's command line (server.py), as `terrafs emulator`."""
from terrafs.emulator.server import main

raise SystemExit(main())
