from torchmoo.cli import main

raise SystemExit(main())
