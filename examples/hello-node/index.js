exports.handler = async (event, context) => {
  return { message: "hello " + (event.name || "world"), requestId: context.requestId };
};
