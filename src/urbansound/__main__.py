from urbansound.cli import main

raise SystemExit(main())
