from mailproxy.cli import main

raise SystemExit(main())
