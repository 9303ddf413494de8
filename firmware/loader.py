# The A/B app loader: picks the app slot to boot, counts trial boots, rolls
# back, and starts the app. It lives outside both slots (loader.mpy at the
# file system's root), so an over-the-air update never replaces it.
#
#   /loader.mpy          this file, compiled
#   /main.py             boards: "import loader; loader.run()"
#   /ota.json            the state below (absent: app a, nothing pending)
#   /app_a/, /app_b/     each a whole app: edge/*.mpy, firmware/*.mpy and
#                        manifest.json (every file's size and sha256)
#
# On the unix port (the virtual board), from the board's directory:
#   MICROPYPATH=.:.frozen micropython -m loader --config config.json
#
# ota.json, written atomically (a temporary file renamed over it):
#   active     "a" or "b": the slot that is known to work
#   pending    the slot to try, or null
#   boots      trial boots of pending so far
#   max_boots  trial boots allowed before rolling back
#   cmd        id of the command that staged pending ("" if none)
#   sha        slot -> bundle sha256 (the sha256 of its manifest.json)
#   report     the outcome of the last trial, until the app has told the
#              hub: {"cmd", "outcome": "confirmed" | "rolled_back", "slot",
#              "boots"}
#
# Each boot with a pending slot counts one trial boot and runs pending. The
# app confirms it (confirm()) once it is connected and a hub acknowledged
# its readings; a boot that finds boots == max_boots without a confirmation
# rolls back: it drops pending, records the report and runs active. An app
# that raises resets the board (on the unix port: exits with status 3), so a
# broken app uses up its trial boots by itself; a hung one is reset by the
# watchdog.
import json
import os
import sys

STATE = "ota.json"
_TMP = "ota.json.tmp"
RESET_EXIT = 3  # unix port: the exit status that stands for a reset

running = None  # the slot this boot runs
trial = False  # running is pending, not yet confirmed


def _default():
    return {
        "active": "a",
        "pending": None,
        "boots": 0,
        "max_boots": 3,
        "cmd": "",
        "sha": {},
        "report": None,
    }


def load():
    st = _default()
    try:
        with open(STATE) as f:
            st.update(json.load(f))
    except (OSError, ValueError):
        pass  # no state yet (or torn before the rename): app a
    if st["active"] not in ("a", "b"):
        st["active"] = "a"
    if st["pending"] not in ("a", "b") or st["pending"] == st["active"]:
        st["pending"] = None
    return st


def save(st):
    with open(_TMP, "w") as f:
        f.write(json.dumps(st))
    os.rename(_TMP, STATE)


def other(slot):
    return "b" if slot == "a" else "a"


def slot_dir(slot):
    return "app_" + slot


def choose(st):
    # -> the slot to boot; saves the state when it changes.
    global running, trial
    p = st["pending"]
    if p is None:
        running = st["active"]
        trial = False
        return running
    if st["boots"] >= st["max_boots"]:
        st["report"] = {"cmd": st["cmd"], "outcome": "rolled_back", "slot": p, "boots": st["boots"]}
        st["pending"] = None
        st["boots"] = 0
        save(st)
        running = st["active"]
        trial = False
        return running
    st["boots"] += 1
    save(st)
    running = p
    trial = True
    return running


# -- the app's side -----------------------------------------------------------------------


def stage(slot, sha, cmd, max_boots):
    # The app downloaded and verified a bundle into slot: try it from the
    # next boot on.
    st = load()
    if slot == st["active"]:
        raise ValueError("cannot stage the active slot")
    st["pending"] = slot
    st["boots"] = 0
    st["max_boots"] = max_boots
    st["cmd"] = cmd
    st["sha"][slot] = sha
    st["report"] = None
    save(st)


def confirm():
    # The trial app is connected and acknowledged: make it the active slot.
    # Returns the report to send (None when this boot is not a trial).
    global trial
    if not trial:
        return None
    st = load()
    if st["pending"] != running:
        trial = False
        return None
    st["report"] = {"cmd": st["cmd"], "outcome": "confirmed", "slot": running, "boots": st["boots"]}
    st["active"] = running
    st["pending"] = None
    st["boots"] = 0
    save(st)
    trial = False
    return st["report"]


def report():
    return load()["report"]


def clear_report():
    st = load()
    if st["report"] is not None:
        st["report"] = None
        save(st)


def describe():
    # "b:1f2e3d4c": the running slot and its bundle's short sha (known for
    # slots filled over the air), for DeviceStatus.firmware; "~" marks a
    # trial boot.
    sha = load()["sha"].get(running) or ""
    return "%s%s%s" % (running, "~" if trial else "", ":" + sha[:8] if sha else "")


def _reset():
    if sys.platform in ("esp32", "rp2"):
        import time

        import machine

        time.sleep_ms(2000)  # let a serial console show the error first
        machine.reset()
    sys.exit(RESET_EXIT)


def run():
    slot = choose(load())
    sys.path.insert(0, slot_dir(slot))
    print("loader: app %s%s" % (slot, " (trial)" if trial else ""))
    try:
        import firmware.main
        from edge.ota import Updater

        firmware.main.main(Updater(sys.modules[__name__]))
    except KeyboardInterrupt:
        pass  # Ctrl-C: back to the REPL (the unix port: the board stops)
    except SystemExit:
        raise
    except Exception as e:
        sys.print_exception(e)
        print("loader: app %s failed; resetting" % slot)
        _reset()


if __name__ == "__main__":
    # micropython -m loader: run the module under its own name, so that the
    # app's "import loader" finds this one state, not a second copy.
    import loader  # type: ignore[import-not-found]  # this module

    loader.run()
