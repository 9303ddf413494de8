# mqtt_device.py's scriptable device with the brokers over TLS.
#
#   micropython mqtt_tls_device.py      (config, then commands, on stdin)
#
# The config, the commands and the events are mqtt_device.py's; one key more:
#   ca        base64 of the CA certificate (DER) the client pins, through
#             edge.mqtt.tls_context, as edge/node.py does with the device
#             config's "ca"; absent or null: plain TCP
# The same Runner runs inside CPython's asyncio (mqtt_tls_harness.py).
import asyncio
import binascii
import json
import sys

try:
    import mqtt_device  # MicroPython: this script's folder is on sys.path
except ImportError:
    from tests.micropython import mqtt_device

from edge.mqtt import MQTTClient, tls_context


class Runner(mqtt_device.Runner):
    def __init__(self, cfg, emit):
        super().__init__(cfg, emit)
        ca = cfg.get("ca")
        if not ca:
            return
        # The same client as mqtt_device.Runner's, with the context.
        kw = {}
        for k in mqtt_device._ARGS:
            if k in cfg:
                kw[k] = cfg[k]
        will = cfg.get("will")
        if will:
            kw["will"] = (will[0], binascii.unhexlify(will[1]), will[2], will[3])
        servers = [(h, p) for h, p in cfg["servers"]]
        self.c = MQTTClient(
            cfg["client_id"], servers, on_message=self.on_message, tls=tls_context(ca), **kw
        )


async def _main():
    stdin = asyncio.StreamReader(sys.stdin)
    r = Runner(json.loads(await stdin.readline()), mqtt_device._emit)
    await r.main(stdin.readline)


if __name__ == "__main__":
    asyncio.run(_main())
