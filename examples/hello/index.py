def handler(event, context):
    return {"message": "hello " + event.get("name", "world")}
