import sys

from ftjax.assets.fetching import main

sys.exit(main(sys.argv[1:]))
