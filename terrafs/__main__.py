from terrafs.cli import main

raise SystemExit(main())
