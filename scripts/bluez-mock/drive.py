#!/usr/bin/env python3
"""Drive python-dbusmock's bluez5 template for gateway/tests/bluez_mock.rs.

Runs one command against the bus in DBUS_SYSTEM_BUS_ADDRESS and exits
(0 on success). Values are sent with the exact D-Bus types btleplug needs
(RSSI int16 'n'; ManufacturerData a{qv} of 'ay'; ServiceData a{sv} of 'ay'):
untyped values become other types and btleplug ignores them silently.

  drive.py wait-bluez SECONDS
  drive.py add-adapter hci0
  drive.py remove-adapter hci0
  drive.py add-device hci0 AA:BB:CC:DD:EE:01
  drive.py advert hci0 AA:BB:CC:DD:EE:01 RSSI [mfr COMPANY HEX] [svc UUID HEX]
  drive.py rssi hci0 AA:BB:CC:DD:EE:01 RSSI
"""

import sys
import time

import dbus

BLUEZ = "org.bluez"
MOCK_IFACE = "org.bluez.Mock"
DEVICE_IFACE = "org.bluez.Device1"


def bus():
    return dbus.SystemBus()


def mock_manager():
    return dbus.Interface(bus().get_object(BLUEZ, "/"), MOCK_IFACE)


def device_path(adapter, address):
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


def update(adapter, address, props):
    obj = bus().get_object(BLUEZ, device_path(adapter, address))
    mock = dbus.Interface(obj, "org.freedesktop.DBus.Mock")
    mock.UpdateProperties(DEVICE_IFACE, props)


def wait_bluez(seconds):
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            dbus_iface = dbus.Interface(
                bus().get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"),
                "org.freedesktop.DBus",
            )
            if dbus_iface.NameHasOwner(BLUEZ):
                return
        except dbus.exceptions.DBusException:
            pass
        time.sleep(0.05)
    sys.exit(f"drive.py: {BLUEZ} has no owner after {seconds} s")


def advert(args):
    adapter, address, rssi, rest = args[0], args[1], int(args[2]), args[3:]
    props = {"RSSI": dbus.Int16(rssi)}
    while rest:
        kind = rest[0]
        if kind == "mfr":
            company, data = int(rest[1], 0), bytes.fromhex(rest[2])
            props["ManufacturerData"] = dbus.Dictionary(
                {dbus.UInt16(company): dbus.Array(data, signature="y")},
                signature="qv",
            )
        elif kind == "svc":
            uuid, data = rest[1], bytes.fromhex(rest[2])
            props["ServiceData"] = dbus.Dictionary(
                {dbus.String(uuid): dbus.Array(data, signature="y")},
                signature="sv",
            )
        else:
            sys.exit(f"drive.py: unknown advert part {kind!r}")
        rest = rest[3:]
    update(adapter, address, props)


def main(argv):
    if not argv:
        sys.exit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "wait-bluez":
        wait_bluez(args[0])
    elif cmd == "add-adapter":
        mock_manager().AddAdapter(args[0], "gateway-test")
    elif cmd == "remove-adapter":
        mock_manager().RemoveAdapterWithDevices(args[0])
    elif cmd == "add-device":
        mock_manager().AddDevice(args[0], args[1], "beacon")
        # AddDevice's defaults have the wrong types; overwrite them.
        update(
            args[0],
            args[1],
            {
                "ManufacturerData": dbus.Dictionary({}, signature="qv"),
                "ServiceData": dbus.Dictionary({}, signature="sv"),
            },
        )
    elif cmd == "advert":
        advert(args)
    elif cmd == "rssi":
        update(args[0], args[1], {"RSSI": dbus.Int16(int(args[2]))})
    else:
        sys.exit(f"drive.py: unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
