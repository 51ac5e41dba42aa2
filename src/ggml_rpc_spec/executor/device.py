"""NumPy CPU devices: buffers of bytes in a fake but consistent address space.

Clients do pointer arithmetic on what the server hands out (`data = base + offset`), so
handles and base addresses must look like real pointers: non-zero, unique, aligned and
stable.  Here they come from two counters that only ever grow, so a handle or address is
never reused: a stale one from a freed buffer (or another connection) can never alias a
live buffer.  Memory accounting is real: free memory shrinks with every allocation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ggml_rpc_spec.protocol.rules import BufferInfo

ALIGNMENT = 32
MAX_SIZE = 2**64 - 1  # like upstream's CPU device: one buffer may take all memory
HANDLE_BASE = 0x5600_0000_0000  # handles look like heap pointers to buffer objects ...
HANDLE_STEP = 0x100
ADDRESS_BASE = 0x7F00_0000_0000  # ... and data addresses like large mmap'd regions
ADDRESS_GAP = 1 << 20  # unmapped space between buffers, so an overrun never lands in a neighbour


@dataclass(eq=False)
class Buffer:
    """One allocation: `memory` is the bytes, `base` their server address."""

    handle: int
    base: int
    size: int
    device: "Device | None"  # None: a buffer the guard mirrors, which no device of ours holds
    memory: np.ndarray
    version: int = 0  # bumped on every write, so caches of derived data (dequantized weights) can expire
    freed: bool = False

    @property
    def info(self) -> BufferInfo:
        return BufferInfo(self.base, self.size)

    def view(self, address: int, size: int) -> memoryview:
        """Bytes [address, address+size) as a writable view; the caller has checked bounds."""
        start = address - self.base
        return self.memory.data[start : start + size]  # .data: the array's memoryview

    def release(self) -> None:
        """Give the memory back to the device that allocated it."""
        if self.device is None:
            raise ValueError(f"buffer 0x{self.handle:x} was allocated by no device: nothing to release")
        self.device.release(self)

    def touched(self) -> None:
        self.version += 1


class AddressSpace:
    """Hands out unique handles and non-overlapping, aligned base addresses (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_handle = HANDLE_BASE
        self._next_address = ADDRESS_BASE

    def reserve(self, size: int) -> tuple[int, int]:
        with self._lock:
            handle = self._next_handle
            self._next_handle += HANDLE_STEP
            if size == 0:
                return handle, 0  # upstream: a zero-size buffer has base 0
            base = self._next_address
            self._next_address += -(-size // 4096) * 4096 + ADDRESS_GAP
            return handle, base


@dataclass
class Device:
    index: int
    total: int
    space: AddressSpace
    alignment: int = ALIGNMENT
    max_size: int = MAX_SIZE
    used: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def free(self) -> int:
        return self.total - self.used

    def allocate(self, size: int) -> Buffer | None:
        """A zeroed buffer, or None when the device cannot hold `size` more bytes."""
        with self._lock:
            if size > self.max_size or size > self.free:
                return None
            self.used += size
        try:
            memory = np.zeros(size, dtype=np.uint8)
        except (MemoryError, ValueError):
            with self._lock:
                self.used -= size
            return None
        handle, base = self.space.reserve(size)
        return Buffer(handle, base, size, self, memory)

    def release(self, buffer: Buffer) -> None:
        if buffer.freed:
            return
        buffer.freed = True
        buffer.memory = np.zeros(0, dtype=np.uint8)
        with self._lock:
            self.used -= buffer.size


def make_devices(count: int, memory_per_device: int) -> list[Device]:
    space = AddressSpace()
    return [Device(index, memory_per_device, space) for index in range(count)]
