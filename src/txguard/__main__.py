from txguard.cli import main

raise SystemExit(main())
