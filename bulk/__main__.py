from __future__ import annotations

from bulk.cli import main

raise SystemExit(main())
