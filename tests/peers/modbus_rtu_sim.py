#!/usr/bin/env python3
"""Modbus RTU bus simulator (several unit ids on one line) for fieldbridge's tests (pymodbus 3.16.1).

    modbus_rtu_sim.py --serial PATH [--baud 9600] [--parity N|E|O] [--stopbits 1|2]
                      (--spec FILE.json | --units-count N)
    modbus_rtu_sim.py --tcp-port N [--host 127.0.0.1] (--spec FILE.json | --units-count N)

--serial serves RTU frames on a serial device (the device end of a socat pty pair) and prints
`READY` once the port is open. --tcp-port serves RTU framing (unit id + PDU + CRC, no MBAP
header) over TCP, like an RS-485 device server in transparent mode; port 0 binds a free port,
announced as `READY port=<port>`. Baud, parity and stop bits are passed to the port (a pty stores
them but does not enforce them).

Spec file (JSON):
    {"units": {"1": {"holding": {"0": 16812}, "input": {}, "coils": {"0": true}, "discrete": {},
                     "typed": [{"table": "holding", "address": 10, "type": "f32",
                                "order": "CDAB", "value": 21.5},
                               {"table": "input", "address": 30, "type": "string",
                                "length": 4, "value": "SDM630"}],
                     "size": {"holding": 200}},
               "2": {...}}}
- holding/input: raw 16-bit register values; coils/discrete: true/false.
- typed: values encoded here with Python's struct (independent of the Rust decoder).
  table: holding (default) | input. type: u16 i16 u32 i32 u64 i64 f32 f64 string.
  order (default ABCD), for 32-bit values: ABCD (big-endian), CDAB (word swap), BADC (byte swap
  within each word), DCBA (little-endian); for 64-bit values ABCDEFGH, GHEFCDAB, BADCFEHG,
  HGFEDCBA, or the 4-letter names meaning the same pattern (ABCD = ABCDEFGH, CDAB = GHEFCDAB,
  BADC = BADCFEHG, DCBA = HGFEDCBA); for 16-bit values ABCD/AB (as is) or BADC/BA (bytes
  swapped). string: `length` registers, high byte first (order BADC: bytes swapped in each
  register), UTF-8, padded with 0x00. Typed entries may not overlap each other or raw entries.
- size (optional, per table): number of addresses served, 0..size-1; a request reaching beyond
  is answered with exception 02. Default: max(100, highest address used + 1).
--units-count N serves units 1..N, each with this map (a spec given as well adds or replaces):
    holding[i] = 100*unit + i for i in 0..9, holding 10..11 = f32 ABCD (unit + 0.5),
    input[i] = 1000 + 100*unit + i for i in 0..9, coils 0..3 = true,false,true,false,
    discrete 0..1 = false,true.

Like a real RTU slave it expects one request at a time: pymodbus 3.16.1 decodes one frame per
read and drops whatever else came in that read, so a second request written before the first was
answered may be lost (and then is not counted). Bytes that do not form a frame with a valid CRC
are dropped without an answer, and so are function codes pymodbus does not know (a real device
would answer those with exception 01).

Requests for unit ids the bus does not serve get no answer (pymodbus 3.16.1 would answer with
exception 04; those are dropped). Unit 0 is just another unknown id (no broadcast).

Control lines on stdin, each acknowledged with `OK <line>` on stdout (`ERR <line>: <reason>`):
    mute UNIT | unmute UNIT        a muted unit neither answers nor executes requests
    delay UNIT SECONDS             the unit's replies are sent SECONDS late (0 = on time)
    garbage UNIT                   the unit's next reply goes out with a corrupted CRC (once)
    fault UNIT KIND                every reply of the unit from now on, by KIND:
                                     crc        sent with a corrupted CRC (bad wiring, baud)
                                     garbage    replaced by as many 0xA5 bytes (no frame)
                                     wrong-unit sent as unit UNIT+100 (UNIT-100 above 147),
                                                with a valid CRC
                                     none       sent as it is again
                                   (`delay UNIT SECONDS` makes a slow unit)
    exception UNIT CODE            answer every request of the unit with exception CODE
                                   (nothing is executed); `exception UNIT 0` ends that
    set UNIT TABLE ADDR VALUE      TABLE: holding | input | coils | discrete
    typed UNIT TABLE ADDR TYPE ORDER VALUE
                                   encode VALUE like a spec's typed entry and store it (TABLE:
                                   holding | input); for strings VALUE is `LENGTH TEXT...`
    get UNIT TABLE ADDR            prints `VALUE <n>` (bits as 0/1) before the OK
    stats                          prints `STATS unit=<u> requests=<n> writes=<w>` for every
                                   served unit and every other id seen on the wire, ascending,
                                   then `STATS total=<n>`. Requests are counted per unit id as
                                   decoded from the wire (valid CRC), whatever happens next;
                                   writes are requests with function code 5, 6, 15, 16 or 23.
    reopen                         (serial mode) close the port if still open and open the path
                                   again, e.g. after socat was restarted; OK once it is open
    quit
Stdin EOF or SIGTERM ends the process too. When the serial line goes away (socat killed), the
port is closed and the process keeps running (printing nothing) until `reopen` or the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
import threading

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

DEFAULT_SIZE = 100
TABLES = ("holding", "input", "coils", "discrete")
BIT_TABLES = ("coils", "discrete")
# Function code and the table it addresses, for reads (used for the bit-range check).
BIT_FUNCTIONS = {1: "coils", 2: "discrete", 5: "coils", 15: "coils"}
WRITE_FUNCTIONS = {5, 6, 15, 16, 23}
# The function code each table is addressed with when `set`/`get` touch the store.
STORE_FUNCTION = {"holding": 3, "input": 4, "coils": 1, "discrete": 2}

TYPE_FORMATS = {
    "u16": "H",
    "i16": "h",
    "u32": "I",
    "i32": "i",
    "f32": "f",
    "u64": "Q",
    "i64": "q",
    "f64": "d",
}
# order name -> (reverse the word order, swap the two bytes inside each word)
ORDERS = {
    "AB": (False, False),
    "BA": (False, True),
    "ABCD": (False, False),
    "CDAB": (True, False),
    "BADC": (False, True),
    "DCBA": (True, True),
    "ABCDEFGH": (False, False),
    "GHEFCDAB": (True, False),
    "BADCFEHG": (False, True),
    "HGFEDCBA": (True, True),
}
ORDERS_BY_WIDTH = {
    1: {"AB", "BA", "ABCD", "BADC"},
    2: {"ABCD", "CDAB", "BADC", "DCBA"},
    4: {"ABCD", "CDAB", "BADC", "DCBA", "ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"},
}


class SpecError(ValueError):
    pass


FAULTS = ("none", "crc", "garbage", "wrong-unit")


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_fault(packet: bytes, unit: int, kind: str) -> bytes:
    """The reply frame `packet` as a unit with fault `kind` sends it."""
    if kind == "crc":
        return packet[:-2] + bytes(b ^ 0xFF for b in packet[-2:])
    if kind == "garbage":
        return b"\xa5" * len(packet)
    if kind == "wrong-unit":
        other = unit + 100 if unit <= 147 else unit - 100
        body = bytes([other]) + packet[1:-2]
        return body + crc16(body).to_bytes(2, "little")
    return packet


def to_words(raw: bytes, order: str) -> list[int]:
    """16-bit register values of big-endian bytes `raw`, rearranged into `order`."""
    reverse, swap = ORDERS[order]
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if reverse:
        words.reverse()
    if swap:
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def encode_typed(entry: dict) -> tuple[str, int, list[int]]:
    """(table, address, registers) of one typed spec entry."""
    known = {"table", "address", "type", "order", "value", "length"}
    if unknown := set(entry) - known:
        raise SpecError(f"typed entry {entry}: unknown keys {sorted(unknown)}")
    table = entry.get("table", "holding")
    if table not in ("holding", "input"):
        raise SpecError(f"typed entry {entry}: table must be holding or input")
    address = entry.get("address")
    if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise SpecError(f"typed entry {entry}: address must be 0..65535")
    kind = entry.get("type")
    order = str(entry.get("order", "ABCD")).upper()
    value = entry.get("value")
    if kind == "string":
        length = entry.get("length")
        if not isinstance(length, int) or length < 1:
            raise SpecError(f"typed entry {entry}: a string needs length = registers (>= 1)")
        if order not in ("ABCD", "BADC", "AB", "BA"):
            raise SpecError(f"typed entry {entry}: string order must be ABCD or BADC")
        if not isinstance(value, str):
            raise SpecError(f"typed entry {entry}: a string value must be a JSON string")
        raw = value.encode("utf-8")
        if len(raw) > 2 * length:
            raise SpecError(f"typed entry {entry}: {len(raw)} bytes do not fit {length} registers")
        raw = raw.ljust(2 * length, b"\x00")
        words = to_words(raw, "BADC" if order in ("BADC", "BA") else "ABCD")
    elif kind in TYPE_FORMATS:
        if "length" in entry:
            raise SpecError(f"typed entry {entry}: length is only for strings")
        fmt = TYPE_FORMATS[kind]
        width = struct.calcsize(fmt) // 2
        if order not in ORDERS_BY_WIDTH[width]:
            raise SpecError(
                f"typed entry {entry}: order for {kind} must be one of "
                f"{sorted(ORDERS_BY_WIDTH[width])}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"typed entry {entry}: value must be a number")
        if kind[0] in "ui" and not isinstance(value, int):
            raise SpecError(f"typed entry {entry}: value of {kind} must be an integer")
        try:
            raw = struct.pack(">" + fmt, value)
        except struct.error as exc:
            raise SpecError(f"typed entry {entry}: {exc}") from exc
        words = to_words(raw, order)
    else:
        raise SpecError(
            f"typed entry {entry}: type must be one of {sorted(TYPE_FORMATS)} or string"
        )
    if address + len(words) > 0x10000:
        raise SpecError(f"typed entry {entry}: runs past address 65535")
    return table, address, words


def check_value(table: str, addr: int, value) -> None:
    if not 0 <= addr <= 0xFFFF:
        raise SpecError(f"{table} address {addr} outside 0..65535")
    if table in BIT_TABLES:
        if not isinstance(value, bool):
            raise SpecError(f"{table}[{addr}] must be true or false")
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise SpecError(f"{table}[{addr}] must be a raw 16-bit register value")


def parse_unit(unit: str, raw: dict) -> dict:
    if not isinstance(raw, dict):
        raise SpecError(f"unit {unit}: must be an object")
    if unknown := set(raw) - set(TABLES) - {"typed", "size"}:
        raise SpecError(f"unit {unit}: unknown keys {sorted(unknown)}")
    tables: dict[str, dict[int, int | bool]] = {}
    for table in TABLES:
        entries = {int(addr): value for addr, value in raw.get(table, {}).items()}
        for addr, value in entries.items():
            check_value(table, addr, value)
        tables[table] = entries
    for entry in raw.get("typed", []):
        table, address, words = encode_typed(entry)
        for offset, word in enumerate(words):
            addr = address + offset
            if addr in tables[table]:
                raise SpecError(f"unit {unit}: {table} register {addr} is defined twice")
            tables[table][addr] = word
    sizes = raw.get("size", {})
    if unknown := set(sizes) - set(TABLES):
        raise SpecError(f"unit {unit}: unknown tables in size: {sorted(unknown)}")
    size = {}
    for table in TABLES:
        top = max(tables[table], default=-1) + 1
        size[table] = sizes.get(table, max(DEFAULT_SIZE, top))
        if not isinstance(size[table], int) or not top <= size[table] <= 0x10000:
            raise SpecError(f"unit {unit}: size.{table} must cover 0..{top - 1} and be <= 65536")
    return {"tables": tables, "size": size}


def default_unit(unit: int) -> dict:
    holding = {i: 100 * unit + i for i in range(10)}
    holding.update(enumerate(to_words(struct.pack(">f", unit + 0.5), "ABCD"), start=10))
    raw = {
        "holding": {str(a): v for a, v in holding.items()},
        "input": {str(i): 1000 + 100 * unit + i for i in range(10)},
        "coils": {"0": True, "1": False, "2": True, "3": False},
        "discrete": {"0": False, "1": True},
    }
    return parse_unit(str(unit), raw)


def load_units(spec_path: str | None, units_count: int) -> dict[int, dict]:
    units = {u: default_unit(u) for u in range(1, units_count + 1)}
    if spec_path:
        with open(spec_path, encoding="utf-8") as f:
            raw = json.load(f)
        if unknown := set(raw) - {"units"}:
            raise SpecError(f"unknown top-level keys {sorted(unknown)}")
        for unit, body in raw.get("units", {}).items():
            if not unit.isdigit() or not 1 <= int(unit) <= 247:
                raise SpecError(f"unit id {unit!r} must be 1..247")
            units[int(unit)] = parse_unit(unit, body)
    if not units:
        raise SpecError("no units: give --spec with units or --units-count N")
    return units


class Unit:
    """One device on the bus: its store and its fault switches."""

    def __init__(self, unit: int, spec: dict) -> None:
        self.id = unit
        self.size = spec["size"]
        self.muted = False
        self.delay = 0.0
        self.garbage = False
        self.fault = "none"
        self.exception = 0
        tables = spec["tables"]

        def registers(table: str) -> list[SimData]:
            values = [tables[table].get(a, 0) for a in range(self.size[table])]
            return [SimData(0, values=values, datatype=DataType.REGISTERS)]

        def bits(table: str) -> list[SimData]:
            values = [tables[table].get(a, False) for a in range(self.size[table])]
            return [SimData(0, values=values, datatype=DataType.BITS)]

        # Four separate tables, as on a real device; the shared layout would alias them.
        self.device = SimDevice(
            id=unit,
            simdata=(bits("coils"), bits("discrete"), registers("holding"), registers("input")),
        )


class Bus:
    """State shared by all connections, changed by the stdin commands."""

    def __init__(self, units: dict[int, dict]) -> None:
        self.units = {u: Unit(u, spec) for u, spec in units.items()}
        self.requests: dict[int, int] = {}
        self.writes: dict[int, int] = {}

    def unit(self, text: str) -> Unit:
        unit = self.units.get(int(text))
        if unit is None:
            raise ValueError(f"unit {text} is not on this bus")
        return unit


class BusConnection(ServerRequestHandler):
    """The serial line (or one TCP connection); the hooks model the bus."""

    def __init__(self, server: ModbusSerialServer | ModbusTcpServer, bus: Bus) -> None:
        self.bus = bus
        super().__init__(server, self._on_packet, self._on_pdu, None)

    def _on_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if sending:
            return pdu
        bus, dev = self.bus, pdu.dev_id
        bus.requests[dev] = bus.requests.get(dev, 0) + 1
        if pdu.function_code in WRITE_FUNCTIONS:
            bus.writes[dev] = bus.writes.get(dev, 0) + 1
        unit = bus.units.get(dev)
        # Returning None makes the handler skip the request: no execution, no reply. That is
        # what a real bus does for an id nobody has (pymodbus would answer exception 04).
        if unit is None or unit.muted:
            return None
        if unit.exception:
            self._reply_exception(pdu, unit.exception)
            return None
        # pymodbus stores bits in 16-bit words, so bits past the table end would read as padding.
        table = BIT_FUNCTIONS.get(pdu.function_code)
        if table and pdu.address + max(pdu.count, 1) > unit.size[table]:
            self._reply_exception(pdu, ExcCodes.ILLEGAL_ADDRESS)
            return None
        return pdu

    def _reply_exception(self, pdu: ModbusPDU, code: int) -> None:
        self.server_send(
            ExceptionResponse(
                pdu.function_code, code, device_id=pdu.dev_id, transaction=pdu.transaction_id
            ),
            None,
        )

    def _on_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit = self.bus.units.get(packet[0])
        if unit is None:
            return b""
        if unit.garbage:
            unit.garbage = False
            packet = packet[:-2] + bytes(b ^ 0xFF for b in packet[-2:])
        packet = with_fault(packet, unit.id, unit.fault)
        if unit.delay > 0:
            self.loop.call_later(unit.delay, self._send_late, packet)
            return b""
        return packet

    def _send_late(self, packet: bytes) -> None:
        if self.is_active():
            self.send(packet)


class SerialBus(ModbusSerialServer):
    def __init__(self, bus: Bus, devices: list[SimDevice], **kwargs) -> None:
        self.bus = bus
        # reconnect_delay=0: when the line goes away we wait for `reopen` instead of retrying.
        super().__init__(devices, framer=FramerType.RTU, reconnect_delay=0, **kwargs)

    def callback_new_connection(self) -> BusConnection:
        return BusConnection(self, self.bus)


class TcpBus(ModbusTcpServer):
    def __init__(self, bus: Bus, devices: list[SimDevice], address: tuple[str, int]) -> None:
        self.bus = bus
        super().__init__(devices, framer=FramerType.RTU, address=address)

    def callback_new_connection(self) -> BusConnection:
        return BusConnection(self, self.bus)


class Runner:
    def __init__(self, args: argparse.Namespace, bus: Bus) -> None:
        self.args = args
        self.bus = bus
        self.server: SerialBus | TcpBus | None = None

    def devices(self) -> list[SimDevice]:
        return [unit.device for unit in self.bus.units.values()]

    async def open_serial(self) -> None:
        args = self.args
        # pymodbus copies the SimDevice maps into its own runtime: keep one server's store alive
        # across reopen by reusing its context.
        context = self.server.context if self.server else None
        if self.server:
            await self.server.shutdown()
        server = SerialBus(
            self.bus,
            self.devices(),
            port=args.serial,
            baudrate=args.baud,
            parity=args.parity,
            stopbits=args.stopbits,
            bytesize=8,
        )
        if context is not None:
            server.context = context
        await server.serve_forever(background=True)
        if not server.transport:
            raise ValueError(f"cannot open {args.serial}")
        # Bytes written while nobody had the line open would be read as a request.
        server.transport.sync_serial.reset_input_buffer()
        self.server = server

    async def open_tcp(self) -> int:
        self.server = TcpBus(self.bus, self.devices(), (self.args.host, self.args.tcp_port))
        await self.server.serve_forever(background=True)
        return self.server.transport.sockets[0].getsockname()[1]

    async def command(self, line: str) -> bool:
        """Runs one control line; False for quit."""
        bus, server = self.bus, self.server
        match line.split():
            case ["mute", u]:
                bus.unit(u).muted = True
            case ["unmute", u]:
                bus.unit(u).muted = False
            case ["delay", u, seconds]:
                bus.unit(u).delay = max(float(seconds), 0.0)
            case ["garbage", u]:
                bus.unit(u).garbage = True
            case ["fault", u, kind] if kind in FAULTS:
                bus.unit(u).fault = kind
            case ["exception", u, code]:
                code = int(code, 0)
                if not 0 <= code <= 255:
                    raise ValueError("exception code must be 0..255")
                bus.unit(u).exception = code
            case ["set", u, table, addr, value] if table in TABLES:
                unit, address = bus.unit(u), int(addr, 0)
                if table in BIT_TABLES:
                    parsed = value.lower() in ("1", "true", "on")
                else:
                    parsed = int(value, 0)
                check_value(table, address, parsed)
                if address >= unit.size[table]:
                    raise ValueError(f"{table} address {address} beyond the table")
                await server.async_setValues(unit.id, STORE_FUNCTION[table], address, [parsed])
            case ["typed", u, table, addr, kind, order, *value] if value:
                # The rest of the line is the value (a string may contain spaces).
                unit = bus.unit(u)
                text = line.split(None, 6)[6]
                entry = {"table": table, "address": int(addr, 0), "type": kind, "order": order}
                if kind == "string":
                    entry["length"], _, text = text.partition(" ")
                    entry["length"] = int(entry["length"])
                    entry["value"] = text
                elif kind.startswith("f"):
                    entry["value"] = float(text)
                else:
                    entry["value"] = int(text, 0)
                table, address, words = encode_typed(entry)
                if address + len(words) > unit.size[table]:
                    raise ValueError(f"{table} {address}..{address + len(words) - 1} beyond the table")
                await server.async_setValues(unit.id, STORE_FUNCTION[table], address, words)
            case ["get", u, table, addr] if table in TABLES:
                unit, address = bus.unit(u), int(addr, 0)
                if not 0 <= address < unit.size[table]:
                    raise ValueError(f"{table} address {address} beyond the table")
                values = await server.async_getValues(
                    unit.id, STORE_FUNCTION[table], address, 1
                )
                print(f"VALUE {int(values[0])}", flush=True)
            case ["stats"]:
                for dev in sorted(set(bus.units) | set(bus.requests)):
                    print(
                        f"STATS unit={dev} requests={bus.requests.get(dev, 0)} "
                        f"writes={bus.writes.get(dev, 0)}",
                        flush=True,
                    )
                print(f"STATS total={sum(bus.requests.values())}", flush=True)
            case ["reopen"] if self.args.serial:
                await self.open_serial()
            case ["quit"]:
                print(f"OK {line}", flush=True)
                return False
            case _:
                raise ValueError("unknown command")
        print(f"OK {line}", flush=True)
        return True


def start_stdin_reader(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue) -> None:
    # A daemon thread, unlike the default executor, does not hold up exit on SIGTERM while it
    # is blocked in readline().
    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", help="serial device to serve RTU on")
    where.add_argument("--tcp-port", type=int, help="serve RTU framing over TCP (0 = any port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    parser.add_argument("--spec")
    parser.add_argument("--units-count", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.units_count <= 247:
        parser.error("--units-count must be 0..247")

    try:
        bus = Bus(load_units(args.spec, args.units_count))
    except (SpecError, ValueError, OSError) as exc:
        print(f"modbus_rtu_sim: bad spec: {exc}", file=sys.stderr, flush=True)
        return 2
    runner = Runner(args, bus)
    try:
        if args.serial:
            await runner.open_serial()
            print("READY", flush=True)
        else:
            port = await runner.open_tcp()
            print(f"READY port={port}", flush=True)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"modbus_rtu_sim: cannot serve: {exc}", file=sys.stderr, flush=True)
        return 1

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lines.put_nowait, None)
    start_stdin_reader(loop, lines)

    while (line := await lines.get()) is not None:
        if not line:
            continue
        try:
            if not await runner.command(line):
                break
        except (ValueError, RuntimeError, OSError) as exc:
            print(f"ERR {line}: {exc}", flush=True)
    if runner.server:
        await runner.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
