"""An example function: answers with a JSON greeting.

`handle` receives the flask.Request exactly as functions-framework passes it (method, path
after /function/<name>, query, headers, body) and returns anything Flask accepts.
"""

import flask


def handle(request: flask.Request) -> flask.Response:
    name = request.args.get("name", "world")
    return flask.jsonify({"hello": name, "method": request.method, "path": request.path})
