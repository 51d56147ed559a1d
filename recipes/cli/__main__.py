from recipes.cli.main import main

raise SystemExit(main())
