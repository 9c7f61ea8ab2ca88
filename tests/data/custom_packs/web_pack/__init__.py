"""A pack with a frontend extension (WEB_DIRECTORY) and one node."""


class Echo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "echo"

    def echo(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"WebPackEcho": Echo}
WEB_DIRECTORY = "./web"
