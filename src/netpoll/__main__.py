from netpoll.cli import main

raise SystemExit(main())
