"""``python -m diffusion_sampler``: run the sampler server (configuration from SAMPLER_* env).

Settings are checked before torch and diffusers are imported, so a configuration error ends the
process (status 2) in well under a second instead of after the heavy imports.
"""

import sys

from .config import ConfigError, Settings


def main() -> None:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"diffusion-sampler: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from .server import serve

    sys.exit(serve(settings))


if __name__ == "__main__":
    main()
