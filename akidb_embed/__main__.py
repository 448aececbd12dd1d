import sys

from akidb_embed.cli import main

sys.exit(main())
