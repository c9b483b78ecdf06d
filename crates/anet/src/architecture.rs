//! How anet works inside: a map for contributors. Nothing here is API; the
//! module holds only this page.
//!
//! # The request path
//!
//! ```text
//! Client::call(bytes)                              client/client.rs, client/call.rs
//!   CallFuture: the call's deadline; the limits (load shed, rate, concurrency)
//!   when configured; retries the RetryPolicy allows (client/retry.rs)
//!    │
//!    ▼
//! Balancer (shared by every clone, no worker task)  client/balance/, client/registry.rs
//!   p2c over the registry's endpoints: pick two, take the less loaded one
//!   whose pool has a connection with room; load = peak-EWMA response time ×
//!   (requests in flight + 1), or requests in flight alone (client/latency.rs)
//!    │
//!    ▼
//! Endpoint = one address's pool                     client/pool.rs, client/pool_service.rs
//!   min..max connections, dials with backoff, failure accrual, probation,
//!   the lifecycle of each connection (handshake, heartbeat, age, idle:
//!   client/lifecycle.rs); the same Endpoint is behind the public Pool (one
//!   address, for tower's p2c)
//!    │
//!    ▼
//! Connection handle                                 client/connection/handle.rs
//!   takes a unit of the window (poll_ready), claims an answer cell (reused,
//!   client/connection/cells.rs), queues (request, unit, reply) on the
//!   driver's channel
//!    │
//!    ▼
//! Driver task (one per connection, owns the socket) client/connection/driver/
//!   gives the request a slot in the Table → its tag; encodes the frame into the
//!   write buffer; flushes once the queue is empty (one syscall for many frames);
//!   reads frames, looks the tag up, writes the answer into the request's
//!   cell and wakes its caller; runs the one timer (deadlines, quarantine
//!   ends, close grace, the latency estimate's decay); folds each pass's
//!   response times into the estimate it publishes
//!    │
//!    ▼
//! socket ── frame = length, tag, payload (anet-proto: FrameCodec) ──► server
//! ```
//!
//! The response comes back the same way: the driver matches its tag in the
//! [`Table`](#the-tag-lifecycle), writes the answer into the request's cell
//! (only while the cell still holds that request's occupancy), and the caller's
//! [`ConnectionFuture`](crate::client::future::ConnectionFuture) (inside the
//! balancer's and the call's futures) resolves. Routing happens in the caller's
//! own task; the only task hop is the driver's channel.
//!
//! The server ([`crate::server`]) is simpler: an accept loop with admission
//! (connection limits, eviction of idle connections, first-frame timeout:
//! `server/admission.rs`), and per connection one task that reads frames
//! (`server/reader.rs`), charges each request to the server-wide memory budget
//! before reading its body (`server/budget.rs`), calls the user's service
//! concurrently up to a limit (`server/call.rs`; the calls in flight live in
//! reusable slots, each with its own waker, `server/calls.rs`) and writes the
//! answers in completion order with the request's tag (`server/writer.rs`,
//! `server/connection.rs`). An idle connection frees its read buffer at once
//! (reads then go through a scratch on the stack) and its write buffer and
//! slots after 500 ms.
//!
//! Metrics (feature `metrics`) and per-request spans are recorded in one place,
//! `observe.rs`, from one hook per event on these paths.
//!
//! # The tag lifecycle
//!
//! A tag is a slot of the connection's table plus the slot's generation. A
//! slot goes through these states (`client/connection/table.rs`):
//!
//! ```text
//!             issue (tag = slot + next generation)
//!   ┌──────┐ ─────────────────────────────────────► ┌─────────┐  answered
//!   │ Free │                                        │ Waiting │ ──────────► Free
//!   └──────┘ ◄──────────────────────────────────┐   └─────────┘
//!      ▲           late answer                  │        │ caller gave up
//!      │      (dropped, never delivered)        │        │ (timeout, drop)
//!      │                                        │        ▼
//!      │                                        │  ┌─────────────┐
//!      │                                        └──│ Quarantined │  tag and window
//!      │                                        │  └─────────────┘  unit held
//!      │                                        │        │ quarantine ends:
//!      │                                        │        │ the unit goes back
//!      │                                        │        ▼
//!      │                                        │   ┌─────────┐
//!      │                                        └── │ Expired │  tag still held
//!      │                                            └─────────┘
//!      └──── the connection closes: every slot is freed with it
//! ```
//!
//! A tag value is never issued again while a request that carried it may still
//! be answered (DESIGN invariant 1): only the answer or the connection's close
//! frees a slot. When the held slots (`Quarantined` + `Expired`) reach
//! `ConnectionConfig::held_tag_limit`, the connection **retires**: it refuses new
//! requests (`Closed`, so the pool replaces it without counting a failure),
//! waits for what is in flight within the close grace, and closes.
//!
//! # Window capacity
//!
//! The window (`max_in_flight`) is a semaphore of units (`connection/unit.rs`).
//!
//! - **Taken** by `Connection::poll_ready` (or by the balancer's and the pool's
//!   `poll_ready`, which reserve on a chosen connection; `client/readiness.rs`),
//!   or by a direct send when there is room. A handle waiting for room queues on
//!   one connection and is also woken when another connection of its pool (or
//!   balancer) has units nobody queued for (`client/room.rs`).
//! - **Carried** as a value with the request into its table slot.
//! - **Given back** by dropping it: when the answer arrives, when the request
//!   fails unwritten, when an unused reservation is dropped, or when the
//!   quarantine of an abandoned request ends. Nothing counts exits by hand
//!   (invariant 3); the driver merges the units it frees in one pass and returns
//!   them in one batch.
//!
//! # Invariants and the tests that guard them
//!
//! | invariant (DESIGN §4) | guarded by |
//! |---|---|
//! | 1. No misdelivery, with any tag format | `tests/tests/tags.rs` (`a_held_two_digit_ascii_tag_is_not_reissued_when_every_generation_wraps`, four-digit ASCII, one-byte binary; `held_tags_reaching_their_limit_retire_the_connection_and_nothing_else_fails`), `tests/tests/tag_properties.rs` (property test), `tests/tests/connection.rs` (`reordering_server_never_misdelivers_10k_requests_at_concurrency_512`, `a_late_response_after_its_quarantine_is_dropped_not_delivered`), the chaos soak, the `client_receive` fuzz target |
//! | 2. Nothing hangs | `server_closing_mid_flight_fails_every_waiting_request_with_connection_lost`, `with_every_endpoint_down_requests_fail_fast_not_at_the_request_timeout`, `a_trickled_response_times_out_and_its_connection_is_replaced`, `a_balancer_is_pending_while_every_window_is_full_and_woken_when_room_appears` |
//! | 3. Cancellation never leaks capacity | `ten_thousand_dropped_futures_leave_full_capacity_after_late_responses`, `ten_thousand_dropped_futures_to_a_silent_server_free_capacity_after_quarantine`, `requests_ended_unwritten_give_their_window_back`, `a_reservation_dropped_without_a_call_gives_its_unit_back` |
//! | 4. Bounded memory | `tests/tests/flood.rs` (unknown-tag flood, a client that never reads), `a_thousand_connections_with_partial_frames_are_limited_and_timed_out`, codec property tests |
//! | 5. Honest retry | `tests/tests/compose.rs` (`a_maybe_sent_error_of_any_kind_is_not_retried_unless_idempotent`, retries over the balancer, the client and a connection), `a_not_sent_failure_is_retried_transparently` |
//! | 6. Clean shutdown | the `close_*` and `shutdown_*` tests, `dropping_the_last_client_handle_closes_its_connections`, `tests/tests/hygiene.rs` (no socket or task left) |
//!
//! The README's reliability table lists more of them, with the numbers they
//! measured.
