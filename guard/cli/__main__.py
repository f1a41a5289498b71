"""``python -m psaguard.cli`` (what ``accelerate launch -m psaguard.cli`` runs): the ``psaguard`` command."""

from psaguard.cli.main import main

raise SystemExit(main())
