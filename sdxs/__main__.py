from sdxs.cli import main

raise SystemExit(main())
