from terrafs.cli.main import main

raise SystemExit(main())
