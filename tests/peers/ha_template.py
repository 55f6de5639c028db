#!/usr/bin/env python3
"""Renders a Home Assistant MQTT value_template against a payload, the way Home Assistant does:
Jinja2 in a sandboxed environment with `value` (the payload text) and `value_json` (the payload
parsed as JSON, when it is JSON).

Usage: ha_template.py TEMPLATE PAYLOAD
Prints one line: RENDERED <json string of the rendered text>.

Runs with the system python3 and Debian's python3-jinja2 (Home Assistant's own template engine
is Jinja2), not the test venv.
"""

import json
import sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


def main() -> int:
    template, payload = sys.argv[1], sys.argv[2]
    variables = {"value": payload}
    try:
        variables["value_json"] = json.loads(payload)
    except ValueError:
        pass
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(**variables)
    print("RENDERED " + json.dumps(rendered), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
