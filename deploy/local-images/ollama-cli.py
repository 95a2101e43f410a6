#!/usr/bin/env python3
"""``ollama serve | list | pull MODEL`` for the fake Ollama (tests/fake_ollama.py).

Where no Ollama image can be had, docker-compose.local.yml runs this as the `ollama` and
`ollama-pull` services' `ollama` command. `list` and `pull` speak Ollama's HTTP API
(``/api/tags``, ``/api/pull``) to ``OLLAMA_HOST`` exactly as the real CLI's client does, so
they work against a real Ollama too.
"""

import json
import os
import sys
import urllib.request


def host() -> str:
    value = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    return value if "://" in value else f"http://{value}"


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "serve"
    if command == "serve":
        bind = os.environ.get("OLLAMA_HOST", "0.0.0.0:11434").split("://")[-1]
        os.execv(sys.executable, [sys.executable, "/opt/fake-ollama/fake_ollama.py", bind,
                                  os.path.expanduser("~/.ollama/models.json")])
    if command == "list":
        with urllib.request.urlopen(host() + "/api/tags", timeout=5) as response:
            models = json.load(response)["models"]
        print("NAME\tID\tSIZE")
        for model in models:
            print(f"{model['name']}\t{model['digest'][:12]}\t{model['size']}")
        return 0
    if command == "pull" and len(argv) == 3:
        request = urllib.request.Request(host() + "/api/pull", method="POST",
                                         data=json.dumps({"model": argv[2]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            for line in response:
                status = json.loads(line)
                if "error" in status:
                    print(f"Error: {status['error']}", file=sys.stderr)
                    return 1
                print(status.get("status", ""))
        return 0
    print("usage: ollama serve | list | pull MODEL", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
