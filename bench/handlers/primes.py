"""The CPU-light handler every system serves: count the primes up to 10,000."""

LIMIT = 10_000


def handler(event, context):
    sieve = bytearray([1]) * (LIMIT + 1)
    sieve[0:2] = b"\0\0"
    for i in range(2, int(LIMIT**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, LIMIT + 1, i)))
    return {"primes": sum(sieve)}
