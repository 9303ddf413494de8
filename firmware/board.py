# Board glue for ESP32 and Raspberry Pi Pico W: relay pin, watchdog, Wi-Fi
# supervision and the metering sensor. Pins and calibration come from
# /config.json:
#
#   relay_pin        GPIO driving the relay (high = on)
#   current_adc_pin  ADC pin of the current transformer's burden voltage
#   voltage_adc_pin  ADC pin of the mains voltage divider (optional)
#   amps_per_count   calibration: RMS amps per ADC count (read_u16 scale)
#   volts_per_count  calibration: RMS volts per ADC count, or
#   nominal_volts    the mains voltage to assume without a voltage pin
#   wdt_ms           watchdog timeout (default 8000; the sampler feeds it)
import time

import machine

from edge.sensors import ENERGY_WH, POWER_W, VOLTAGE_V

_RMS_SAMPLES = 200  # about ten mains cycles at the ADC rates of these boards

# The running watchdog, if any: `aiot firmware flash` interrupts the app and
# keeps feeding it from a timer while it copies files (a started watchdog
# cannot be stopped, and a soft reset does not stop it either).
wdt = None


def _rms(adc, n):
    # RMS of the AC part of an ADC signal: subtract the mean (mid-rail bias).
    total = 0
    total_sq = 0
    for _ in range(n):
        v = adc.read_u16()
        total += v
        total_sq += v * v
    mean = total / n
    var = total_sq / n - mean * mean
    return var**0.5 if var > 0 else 0.0


class MeterSensor:
    # Power, energy and voltage from a current transformer (and optionally a
    # voltage divider) on the board's ADC.
    def __init__(self, cfg):
        self.i_adc = machine.ADC(machine.Pin(cfg["current_adc_pin"]))
        vpin = cfg.get("voltage_adc_pin")
        self.v_adc = machine.ADC(machine.Pin(vpin)) if vpin is not None else None
        self.amps_per_count = cfg["amps_per_count"]
        self.volts_per_count = cfg.get("volts_per_count", 0.0)
        self.nominal = cfg.get("nominal_volts", 230.0)
        self.energy = cfg.get("start_energy_wh", 0.0)
        self.relay_on = True
        self._last = None

    def sample(self, now_ms):
        amps = _rms(self.i_adc, _RMS_SAMPLES) * self.amps_per_count
        if self.v_adc is not None:
            volts = _rms(self.v_adc, _RMS_SAMPLES) * self.volts_per_count
        else:
            volts = self.nominal
        watts = amps * volts if self.relay_on else 0.0  # apparent power
        if self._last is not None:
            self.energy += watts * (now_ms - self._last) / 3600000.0
        self._last = now_ms
        return (
            (POWER_W, round(watts, 1)),
            (ENERGY_WH, round(self.energy, 2)),
            (VOLTAGE_V, round(volts, 1)),
        )


class Board:
    def __init__(self, cfg):
        self.cfg = cfg
        self.node = None
        pin = cfg.get("relay_pin")
        self._relay = machine.Pin(pin, machine.Pin.OUT, value=1) if pin is not None else None
        global wdt
        self._wdt = wdt = machine.WDT(timeout=cfg.get("wdt_ms", 8000))
        self._wifi_checked = time.ticks_ms()

    def sensor(self):
        return MeterSensor(self.cfg)

    def slot_io(self):
        # The A/B slots on a raw flash partition (appends program in place,
        # no file-system copy on every sync), if the config names one:
        #   ESP32:  "slots_partition": "slots"   (a data partition label)
        #   Pico W: "slots_flash": [start, length] (bytes, past the file system)
        # Otherwise None: slot files on the file system.
        from edge.slotio import BlockSlots

        label = self.cfg.get("slots_partition")
        if label:
            import esp32

            found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=label)
            if not found:
                raise OSError("no data partition labelled %r" % label)
            return BlockSlots(found[0])
        region = self.cfg.get("slots_flash")
        if region:
            import rp2

            return BlockSlots(rp2.Flash(start=region[0], len=region[1]))
        return None

    def relay(self, on):
        if self._relay is not None:
            self._relay.value(1 if on else 0)

    def feed(self):
        # Called by the sampler every sample: a hung loop resets the board.
        self._wdt.feed()
        if time.ticks_diff(time.ticks_ms(), self._wifi_checked) > 30000:
            self._wifi_checked = time.ticks_ms()
            self._check_wifi()

    def _check_wifi(self):
        import network

        wlan = network.WLAN(network.STA_IF)
        if not wlan.isconnected() and self.cfg.get("wifi_ssid"):
            try:
                wlan.connect(self.cfg["wifi_ssid"], self.cfg.get("wifi_password", ""))
            except OSError:
                pass  # tried again in 30 s; the MQTT client waits meanwhile

    def reset(self):
        machine.reset()
