from lottery.cli import main

raise SystemExit(main())
