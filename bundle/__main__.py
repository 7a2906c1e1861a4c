from bundle._entry import main

raise SystemExit(main())
