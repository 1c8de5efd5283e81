from pagelens.servers.cli.main import main

raise SystemExit(main())
