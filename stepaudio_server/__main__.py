import sys

from stepaudio_server.launcher import main

sys.exit(main())
