# Runs first on a board: join Wi-Fi with backoff, then main.py starts.
#
# Settings come from /config.json (wifi_ssid, wifi_password); nothing site
# specific lives in code. If Wi-Fi cannot be joined the device still boots:
# it samples and buffers readings on flash, and firmware.board keeps retrying
# the network in the background.
import json
import sys
import time


def _config():
    try:
        with open("/config.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def connect_wifi(cfg, attempts=6):
    import network

    ssid = cfg.get("wifi_ssid")
    if not ssid:
        print("boot: no wifi_ssid in /config.json; staying offline")
        return False
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    delay = 1
    for _ in range(attempts):
        if wlan.isconnected():
            return True
        try:
            wlan.connect(ssid, cfg.get("wifi_password", ""))
        except OSError as e:
            print("boot: wifi connect error", e)
        t0 = time.ticks_ms()
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < delay * 1000:
            time.sleep_ms(100)
        delay = min(delay * 2, 30)
    print("boot: wifi", "up" if wlan.isconnected() else "down, continuing offline")
    return wlan.isconnected()


if sys.platform in ("esp32", "rp2"):
    connect_wifi(_config())
