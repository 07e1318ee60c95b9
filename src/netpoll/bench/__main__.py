import sys

from netpoll.bench import main

raise SystemExit(main(sys.argv[1:]))
