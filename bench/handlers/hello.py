"""The trivial handler every system serves."""


def handler(event, context):
    return {"message": "hello world"}
