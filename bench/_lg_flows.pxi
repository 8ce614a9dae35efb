# Flows and the sockets that carry them: included by bench/_loadgen.pyx (one module, one namespace).
# A flow runs one program of requests in order; a socket holds `window` flows, a FIFO ring of its
# free Identifiers and a ring of the flows waiting to send. The Engine decides when flows move on;
# this is their layout and the ring arithmetic.


# Operations a flow is made of, and the programs (flows) each mode runs.
cdef enum:
    OP_CARD_AUTH = 0        # Access-Request: card number + PIN (stage 1)
    OP_NUMBER_AUTH = 1      # Access-Request: card number + PIN + dialled number + h323-conf-id (stage 2)
    OP_START = 2            # Accounting-Request Start
    OP_STOP = 3             # Accounting-Request Stop with Acct-Session-Time
    N_OPS = 4
    MAX_STEPS = 4
    N_PROGRAMS = 4          # card-auth, number-auth, acct, call (mixed picks among them)

cdef enum:
    N_IDS = 256             # Identifiers per socket (one octet)

OPS = ("card-auth", "number-auth", "acct-start", "acct-stop")
MODES = ("card-auth", "number-auth", "acct", "call", "mixed")

cdef uint8_t _PROGRAMS[N_PROGRAMS][MAX_STEPS]
cdef int _PROGRAM_LEN[N_PROGRAMS]
_PROGRAMS[0][0] = OP_CARD_AUTH
_PROGRAM_LEN[0] = 1
_PROGRAMS[1][0] = OP_NUMBER_AUTH
_PROGRAM_LEN[1] = 1
_PROGRAMS[2][0] = OP_START
_PROGRAMS[2][1] = OP_STOP
_PROGRAM_LEN[2] = 2
_PROGRAMS[3][0] = OP_CARD_AUTH
_PROGRAMS[3][1] = OP_NUMBER_AUTH
_PROGRAMS[3][2] = OP_START
_PROGRAMS[3][3] = OP_STOP
_PROGRAM_LEN[3] = 4
# "mixed": of every 4 flows, 3 are whole calls and 1 is a balance check (card authentication only).
cdef int _MIXED[4]
_MIXED[:] = [3, 3, 0, 3]


cdef struct Flow:
    int64_t sent_ns         # when the outstanding request was sent
    int64_t sent_rt         # the same on the realtime clock, just before its sendmmsg (latency origin)
    int64_t start_ns        # when the flow's first request was sent
    uint64_t call           # call number, unique in this process; feeds the session identifiers
    int32_t card            # index into the card table
    int16_t ident           # Identifier of the outstanding request, -1 when none is
    uint8_t program         # index into _PROGRAMS
    uint8_t step            # position in the program of the outstanding (or next) request
    uint8_t auth[16]        # Request Authenticator of the outstanding request


cdef struct Sock:
    int fd
    int nflows
    Flow* flows
    int16_t id_flow[N_IDS]  # Identifier -> flow index, -1 when free
    uint8_t free_ids[N_IDS] # FIFO ring of free Identifiers
    int free_head
    int free_count
    int* ready              # ring of flow indices waiting to send their next request
    int ready_head
    int ready_count
    int inflight


cdef int _sock_init(Sock* sk, int fd, int window) except -1:
    """Give a zeroed `sk` its fd and `window` flows, every flow waiting to send, every Identifier free."""
    cdef int j
    sk.fd = fd
    sk.nflows = window
    sk.flows = <Flow*>calloc(window, sizeof(Flow))
    sk.ready = <int*>calloc(window, sizeof(int))
    if not sk.flows or not sk.ready:
        raise MemoryError()
    for j in range(N_IDS):
        sk.id_flow[j] = -1
        sk.free_ids[j] = <uint8_t>j
    sk.free_head = 0
    sk.free_count = N_IDS
    for j in range(window):
        sk.flows[j].ident = -1
        sk.ready[j] = j
    sk.ready_head = 0
    sk.ready_count = window
    return 0


cdef void _sock_free(Sock* sk) noexcept:
    free(sk.flows)
    free(sk.ready)


cdef inline void _push_ready(Sock* sk, int fi) noexcept nogil:
    sk.ready[(sk.ready_head + sk.ready_count) % sk.nflows] = fi
    sk.ready_count += 1


cdef inline int _pop_ready(Sock* sk) noexcept nogil:
    cdef int fi = sk.ready[sk.ready_head]
    sk.ready_head = (sk.ready_head + 1) % sk.nflows
    sk.ready_count -= 1
    return fi


cdef inline int _take_id(Sock* sk) noexcept nogil:
    cdef int ident = sk.free_ids[sk.free_head]
    sk.free_head = (sk.free_head + 1) & (N_IDS - 1)
    sk.free_count -= 1
    return ident


cdef inline void _give_id(Sock* sk, int ident) noexcept nogil:
    sk.free_ids[(sk.free_head + sk.free_count) & (N_IDS - 1)] = <uint8_t>ident
    sk.free_count += 1
    sk.id_flow[ident] = -1
