"""``python -m bench``: see bench/README.md and ``python -m bench --help``."""

import sys

from .harness import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["importtime"]:
        from .importtime import main as importtime_main

        sys.exit(importtime_main(sys.argv[2:]))
    if sys.argv[1:2] == ["identity"]:
        from .identity import main as identity_main

        sys.exit(identity_main(sys.argv[2:]))
    if sys.argv[1:2] == ["copy"]:
        from .copy_bench import main as copy_main

        sys.exit(copy_main(sys.argv[2:]))
    if sys.argv[1:2] == ["workers"]:
        from .workers_curve import main as workers_main

        sys.exit(workers_main(sys.argv[2:]))
    if sys.argv[1:2] == ["sweep"]:
        from .sweep import main as sweep_main

        sys.exit(sweep_main(sys.argv[2:]))
    if sys.argv[1:2] == ["large"]:
        from .large_results import main as large_main

        sys.exit(large_main(sys.argv[2:]))
    if sys.argv[1:2] == ["listen"]:
        from .listen_bench import main as listen_main

        sys.exit(listen_main(sys.argv[2:]))
    sys.exit(main())
