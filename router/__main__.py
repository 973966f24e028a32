"""`python -m router` serves; `python -m router admin ...` manages projects, endpoints and keys."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["admin"]:
        from router.admin import main as admin_main

        raise SystemExit(admin_main(sys.argv[2:]))
    from router.cli import main

    raise SystemExit(main())
