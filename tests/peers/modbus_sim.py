#!/usr/bin/env python3
"""Modbus TCP device simulator for fieldbridge's integration tests (pymodbus 3.16.1).

    modbus_sim.py --port N [--host 127.0.0.1] [--unit 1] [--spec FILE.json]

--port 0 binds a free port; the port actually bound is announced as `READY port=<port>`.

Register map: every table (holding, input, coils, discrete) has addresses 0..99; anything at or
beyond 100 is answered with exception 02. Without --spec the map below is served, including a
holding counter at 20 that counts the read requests covering it. A spec file replaces the map:
    {"holding": {"0": 16812}, "input": {}, "coils": {"0": true}, "discrete": {},
     "counter": 20, "clock": 21}
(raw 16-bit values or bools; "counter" is optional and absent means no counter; "clock" is an
optional holding address that reads as the Unix time in whole seconds modulo 65536 at the
moment of the read, so a published value shows when it was read).

Control lines on stdin, each acknowledged with `OK <line>` on stdout (`ERR <reason>` if invalid):
    mute | unmute | delay SECONDS | set holding|input|coils|discrete ADDR VALUE | stats
`stats` prints `STATS requests=<n>` before its OK. Stdin EOF or SIGTERM ends the process.

Like many real devices it takes one request at a time: pymodbus 3.16.1 decodes one frame per TCP
read and drops whatever else came in that read, so pipelined requests go unanswered (and uncounted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
import threading
import time

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

TABLE_SIZE = 100
TABLES = ("holding", "input", "coils", "discrete")
BIT_FUNCTIONS = {1, 2, 5, 15}
# Function codes whose datastore read returns holding registers to the client.
HOLDING_READS = {3, 23}
# The function code each table is addressed with when the `set` command writes it.
SET_FUNCTION = {"holding": 3, "input": 4, "coils": 1, "discrete": 2}


def words(fmt: str, value) -> list[int]:
    """Big-endian (ABCD) 16-bit words of a packed value."""
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def default_map() -> dict:
    holding: dict[int, int] = {}
    for addr, regs in (
        (0, words("f", 21.5)),
        (2, words("i", -123456)),
        (4, [2345]),
        (10, list(reversed(words("f", 21.5)))),  # CDAB word order
        (12, words("h", -42)),
        (13, words("I", 4000000000)),
    ):
        holding.update(enumerate(regs, start=addr))
    inputs = {0: 777}
    inputs.update(enumerate(words("f", -3.25), start=1))
    return {
        "holding": holding,
        "input": inputs,
        "coils": {0: True, 1: False, 2: True},
        "discrete": {0: False, 1: True},
        "counter": 20,
    }


def load_spec(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    unknown = set(raw) - set(TABLES) - {"counter", "clock"}
    if unknown:
        raise ValueError(f"unknown keys in spec: {sorted(unknown)}")
    spec: dict = {"counter": raw.get("counter"), "clock": raw.get("clock")}
    for table in TABLES:
        entries = {int(addr): value for addr, value in raw.get(table, {}).items()}
        for addr, value in entries.items():
            check_value(table, addr, value)
        spec[table] = entries
    for key in ("counter", "clock"):
        if spec[key] is not None and not 0 <= spec[key] < TABLE_SIZE:
            raise ValueError(f"{key} address {spec[key]} outside 0..{TABLE_SIZE - 1}")
    return spec


def check_value(table: str, addr: int, value) -> None:
    if not 0 <= addr < TABLE_SIZE:
        raise ValueError(f"{table} address {addr} outside 0..{TABLE_SIZE - 1}")
    if table in ("coils", "discrete"):
        if not isinstance(value, bool):
            raise ValueError(f"{table}[{addr}] must be true or false")
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{table}[{addr}] must be a raw 16-bit register value")


class Simulator:
    """State shared by all connections, changed by the stdin commands."""

    def __init__(self, unit: int, spec: dict) -> None:
        self.unit = unit
        self.counter = spec["counter"]
        self.clock = spec.get("clock")
        self.muted = False
        self.delay = 0.0
        self.requests = 0
        self.device = self._device(spec)

    def _device(self, spec: dict) -> SimDevice:
        def registers(table: str) -> list[SimData]:
            values = [spec[table].get(addr, 0) for addr in range(TABLE_SIZE)]
            return [SimData(0, values=values, datatype=DataType.REGISTERS)]

        def bits(table: str) -> list[SimData]:
            values = [spec[table].get(addr, False) for addr in range(TABLE_SIZE)]
            return [SimData(0, values=values, datatype=DataType.BITS)]

        # Four separate tables, as on a real device; the shared layout would alias them.
        return SimDevice(
            id=self.unit,
            simdata=(bits("coils"), bits("discrete"), registers("holding"), registers("input")),
            action=self._action,
        )

    async def _action(self, function_code, start_address, address, count, registers, set_values):
        if (
            self.counter is not None
            and function_code in HOLDING_READS
            and set_values is None
            and address <= self.counter < address + count
        ):
            index = self.counter - start_address
            registers[index] = (registers[index] + 1) & 0xFFFF
        if (
            self.clock is not None
            and function_code in HOLDING_READS
            and set_values is None
            and address <= self.clock < address + count
        ):
            registers[self.clock - start_address] = int(time.time()) & 0xFFFF
        return None


class SimConnection(ServerRequestHandler):
    """One client connection; the hooks are per connection so a late reply goes back on it."""

    def __init__(self, server: SimServer) -> None:
        self.sim = server.sim
        super().__init__(server, self._on_packet, self._on_pdu, None)

    def _on_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if sending:
            return pdu
        self.sim.requests += 1
        # pymodbus answers unknown unit ids with exception 04; a real bus stays silent.
        # Returning None makes the handler skip the request altogether.
        if pdu.dev_id != self.sim.unit:
            return None
        # pymodbus stores bits in 16-bit words, so coils 100..111 would read as padding.
        if pdu.function_code in BIT_FUNCTIONS and pdu.address + max(pdu.count, 1) > TABLE_SIZE:
            self.server_send(
                ExceptionResponse(
                    pdu.function_code,
                    ExcCodes.ILLEGAL_ADDRESS,
                    device_id=pdu.dev_id,
                    transaction=pdu.transaction_id,
                ),
                None,
            )
            return None
        return pdu

    def _on_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending:
            return packet
        if self.sim.muted:
            return b""
        if self.sim.delay > 0:
            self.loop.call_later(self.sim.delay, self._send_late, packet)
            return b""
        return packet

    def _send_late(self, packet: bytes) -> None:
        if self.is_active():
            self.send(packet)


class SimServer(ModbusTcpServer):
    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        self.sim = sim
        super().__init__(sim.device, address=(host, port))

    def callback_new_connection(self) -> SimConnection:
        return SimConnection(self)


async def run_command(server: SimServer, line: str) -> None:
    sim = server.sim
    parts = line.split()
    match parts:
        case ["mute"]:
            sim.muted = True
        case ["unmute"]:
            sim.muted = False
        case ["delay", seconds]:
            sim.delay = max(float(seconds), 0.0)
        case ["set", table, addr, value] if table in TABLES:
            address = int(addr)
            if table in ("coils", "discrete"):
                parsed = value.lower() in ("1", "true", "on")
            else:
                parsed = int(value, 0)
            check_value(table, address, parsed)
            await server.async_setValues(sim.unit, SET_FUNCTION[table], address, [parsed])
        case ["stats"]:
            print(f"STATS requests={sim.requests}", flush=True)
        case _:
            raise ValueError("unknown command")
    print(f"OK {line}", flush=True)


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
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--unit", type=int, default=1)
    parser.add_argument("--spec")
    args = parser.parse_args()

    spec = load_spec(args.spec) if args.spec else default_map()
    server = SimServer(Simulator(args.unit, spec), args.host, args.port)
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]

    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lines.put_nowait, None)
    start_stdin_reader(loop, lines)
    print(f"READY port={port}", flush=True)

    while (line := await lines.get()) is not None:
        if not line:
            continue
        try:
            await run_command(server, line)
        except ValueError as exc:
            print(f"ERR {line}: {exc}", flush=True)
    await server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
