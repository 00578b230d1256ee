from mailproxy.cli.main import main

raise SystemExit(main())
