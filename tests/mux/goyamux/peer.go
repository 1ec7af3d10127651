// Command peer is the Go half of shield's yamux interoperability test
// (tests/mux/test_interop_go.py). It speaks yamux through the reference
// implementation, github.com/hashicorp/yamux, over one TCP connection on
// 127.0.0.1, runs a scripted scenario and prints one JSON object per line on
// stdout. Any failed check prints {"event":"fail","error":...} and exits 1.
//
// Build (Debian packages golang-go and golang-github-hashicorp-yamux-dev):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o goyamux-peer peer.go
//
// Every stream starts with one command byte written by the side that opened it:
//
//	'B' bulk: both sides write -bulk-size pseudo-random bytes, half-close and
//	    read to EOF; both report the SHA-256 of what they sent and received.
//	'H' half-close echo: the opener writes -half-size bytes and half-closes;
//	    the acceptor reads to EOF, only then writes the 32-byte SHA-256 of what
//	    it got, and closes.
//	'R' reset: the opener writes until the acceptor resets the stream (the Go
//	    library cannot reset a stream, so only the Python side accepts these);
//	    the opener must see "connection reset" from both Read and Write.
//	'E' (only with -burst) carries its own stream id as 4 bytes big endian,
//	    1 KiB, then FIN; the acceptor reads to EOF and closes.
//	'G' go-away, opened by the TCP client once its script is done: the acceptor
//	    waits until its own script is done, sends GoAway, writes "A"; the
//	    opener checks that it can no longer open a stream (remote go-away),
//	    sends its own GoAway, writes "K" and half-closes; the acceptor checks
//	    the same and closes. The Python side then closes the connection once
//	    every stream has finished; this program exits 0 when the session ends.
//
// Each side opens -bulk 'B' streams, one 'H' (and, with -reset-stream, one 'R'),
// runs them concurrently, pings, and expects -expect-bulk 'B' and -expect-half
// 'H' streams from its peer.
//
// With -burst N the program runs no script: it opens N 'E' streams at once from
// N goroutines, -burst-rounds times or until the peer sends GoAway, then waits
// for the peer to end the session.
// This library allocates a stream id before it queues the SYN, so concurrent
// opens put SYNs on the wire out of id order, which the spec allows.
//
// With -noaccept the program never accepts a stream: once -backlog streams wait
// for Accept, the library answers every further SYN with RST, the only way this
// version of hashicorp/yamux resets a stream. It then waits for the peer to end
// the session.
//
// This library version (Debian's 0.0+git20190923) returns io.EOF from
// Stream.Read as soon as the local side has called Close() and the receive
// buffer is empty, even if the peer has not sent FIN yet (newer upstream
// versions keep reading after a local Close). Hence: bulk streams call Close() only after reading EOF, and the 'H'
// opener, which must read the reply after its own FIN, polls Read with a short
// back-off until the whole reply is there (bounded by the deadline).
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"io/ioutil"
	"math/rand"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

var (
	mode         = flag.String("mode", "", "client (dial -addr) or server (listen on -addr; port 0 picks one)")
	addr         = flag.String("addr", "127.0.0.1:0", "TCP address, must be on 127.0.0.1")
	window       = flag.Uint("window", 256*1024, "MaxStreamWindowSize in bytes")
	backlog      = flag.Int("backlog", 256, "AcceptBacklog")
	noAccept     = flag.Bool("noaccept", false, "never accept streams (backlog overflow makes the library send RST)")
	bulkStreams  = flag.Int("bulk", 4, "number of 'B' streams to open")
	bulkSize     = flag.Int64("bulk-size", 8<<20, "bytes each side sends on a 'B' stream")
	halfSize     = flag.Int64("half-size", 3<<20, "bytes the opener sends on an 'H' stream")
	resetStream  = flag.Bool("reset-stream", true, "open one 'R' stream, which the peer must reset")
	expectBulk   = flag.Int("expect-bulk", 4, "number of 'B' streams the peer opens")
	expectHalf   = flag.Int("expect-half", 1, "number of 'H' streams the peer opens")
	concurrent   = flag.Bool("concurrent-open", false, "open each script stream in its own goroutine (SYNs may leave out of id order)")
	burst        = flag.Int("burst", 0, "instead of the script: open this many 'E' streams at once from as many goroutines")
	burstRounds  = flag.Int("burst-rounds", 1, "how many times to do the -burst")
	timeout      = flag.Duration("timeout", 120*time.Second, "deadline for the whole run")
	writeTimeout = flag.Duration("write-timeout", 60*time.Second, "yamux ConnectionWriteTimeout (also the keepalive pong timeout)")
	keepalive    = flag.Duration("keepalive", 30*time.Second, "yamux KeepAliveInterval")
)

var concurrentOpen = concurrent

var outMu sync.Mutex

func emit(fields map[string]interface{}) {
	fields["side"] = "go"
	line, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	outMu.Lock()
	os.Stdout.Write(append(line, '\n'))
	outMu.Unlock()
}

// failf reports a failed check and exits 1; callable from any goroutine.
func failf(format string, args ...interface{}) {
	msg := fmt.Sprintf(format, args...)
	emit(map[string]interface{}{"event": "fail", "error": msg, "pending": pending.list()})
	fmt.Fprintf(os.Stderr, "goyamux-peer: FAIL: %s\n", msg)
	os.Exit(1)
}

// pendingSet names the steps still running, so a timeout says what was stuck.
type pendingSet struct {
	mu    sync.Mutex
	steps map[string]bool
}

var pending = &pendingSet{steps: map[string]bool{}}

func (p *pendingSet) add(step string) {
	p.mu.Lock()
	p.steps[step] = true
	p.mu.Unlock()
}

func (p *pendingSet) done(step string) {
	p.mu.Lock()
	delete(p.steps, step)
	p.mu.Unlock()
}

func (p *pendingSet) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.steps))
	for step := range p.steps {
		out = append(out, step)
	}
	sort.Strings(out)
	return out
}

type peer struct {
	sess       *yamux.Session
	client     bool
	deadline   time.Time
	scriptDone chan struct{} // closed once own streams, expected peer streams and ping finished
	goAwayDone int32         // set once this side's part of the 'G' exchange has finished
	bulkSeen   int32
	halfSeen   int32
	incoming   sync.WaitGroup
}

func main() {
	flag.Parse()
	if *mode != "client" && *mode != "server" {
		fmt.Fprintln(os.Stderr, "usage: goyamux-peer -mode client|server -addr 127.0.0.1:PORT [flags]")
		os.Exit(2)
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || host != "127.0.0.1" {
		failf("-addr must be 127.0.0.1:PORT, got %q", *addr)
	}
	deadline := time.Now().Add(*timeout)
	time.AfterFunc(*timeout, func() { failf("deadline of %s exceeded", *timeout) })

	conn := connect(deadline)
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(*window)
	cfg.AcceptBacklog = *backlog
	cfg.ConnectionWriteTimeout = *writeTimeout
	cfg.KeepAliveInterval = *keepalive
	cfg.LogOutput = os.Stderr
	var sess *yamux.Session
	if *mode == "client" {
		sess, err = yamux.Client(conn, cfg)
	} else {
		sess, err = yamux.Server(conn, cfg)
	}
	if err != nil {
		failf("yamux session: %v", err)
	}
	emit(map[string]interface{}{
		"event": "connected", "mode": *mode, "local": conn.LocalAddr().String(),
		"remote": conn.RemoteAddr().String(), "window": *window, "backlog": *backlog,
	})

	if *noAccept {
		pending.add("session close")
		<-sess.CloseChan()
		emit(map[string]interface{}{"event": "closed", "streams_left": sess.NumStreams()})
		return
	}

	p := &peer{sess: sess, client: *mode == "client", deadline: deadline, scriptDone: make(chan struct{})}
	if *burst > 0 {
		// Several OS threads, even on one CPU, so concurrent opens really interleave.
		if runtime.GOMAXPROCS(0) < 4 {
			runtime.GOMAXPROCS(4)
		}
		p.runBurst()
		pending.add("session close")
		<-sess.CloseChan()
		emit(map[string]interface{}{"event": "closed", "streams_left": sess.NumStreams()})
		return
	}
	go func() {
		<-sess.CloseChan()
		if atomic.LoadInt32(&p.goAwayDone) == 0 {
			failf("session closed before the go-away exchange finished")
		}
	}()
	p.incoming.Add(*expectBulk + *expectHalf)
	go p.acceptLoop()
	p.runScript()
	close(p.scriptDone)
	emit(map[string]interface{}{"event": "script_done"})

	if p.client {
		p.goAwayOpener()
	}
	pending.add("session close")
	<-sess.CloseChan()
	if atomic.LoadInt32(&p.goAwayDone) == 0 {
		failf("session closed before the go-away exchange finished")
	}
	emit(map[string]interface{}{"event": "closed", "streams_left": sess.NumStreams()})
}

func connect(deadline time.Time) net.Conn {
	if *mode == "client" {
		conn, err := net.DialTimeout("tcp", *addr, time.Until(deadline))
		if err != nil {
			failf("dial %s: %v", *addr, err)
		}
		return conn
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		failf("listen %s: %v", *addr, err)
	}
	ln.(*net.TCPListener).SetDeadline(deadline)
	emit(map[string]interface{}{"event": "listening", "port": ln.Addr().(*net.TCPAddr).Port})
	conn, err := ln.Accept()
	if err != nil {
		failf("accept: %v", err)
	}
	ln.Close()
	return conn
}

// runScript opens this side's streams, pings, and waits for the peer's streams.
//
// Streams are opened one after the other (SYNs go out in id order), then run
// concurrently. With -concurrent-open each goroutine opens its own stream, as
// a typical Go program would; the library allocates ids before queueing the
// SYN, so SYNs then often reach the wire out of id order.
func (p *peer) runScript() {
	var wg sync.WaitGroup
	run := func(name string, command byte, f func(*yamux.Stream)) {
		var s *yamux.Stream
		if !*concurrentOpen && command != 0 {
			s = p.open(command)
		}
		wg.Add(1)
		pending.add(name)
		go func() {
			defer wg.Done()
			if s == nil && command != 0 {
				s = p.open(command)
			}
			f(s)
			pending.done(name)
		}()
	}
	run("ping", 0, func(*yamux.Stream) { p.ping() })
	for i := 0; i < *bulkStreams; i++ {
		run(fmt.Sprintf("bulk opener #%d", i), 'B', func(s *yamux.Stream) { p.bulk(s, "opener") })
	}
	run("half-close opener", 'H', p.halfOpener)
	if *resetStream {
		run("reset opener", 'R', p.resetOpener)
	}
	pending.add("peer's streams")
	p.incoming.Wait()
	pending.done("peer's streams")
	wg.Wait()
}

// runBurst opens -burst streams at once from as many goroutines, up to
// -burst-rounds times; each stream carries 'E', its id (4 bytes, big endian)
// and 1 KiB, then FIN. Concurrent opens make SYNs leave out of id order, which
// the spec allows. The peer ends the burst early by sending GoAway: opens then
// fail with ErrRemoteGoAway, and a SYN that crossed the GoAway is reset; both
// only stop the burst (the peer judges its side).
func (p *peer) runBurst() {
	var opened, stopped, refused int32
	rounds := 0
	for ; rounds < *burstRounds && atomic.LoadInt32(&stopped)+atomic.LoadInt32(&refused) == 0; rounds++ {
		var wg, ready sync.WaitGroup
		start := make(chan struct{})
		name := fmt.Sprintf("burst round %d", rounds)
		pending.add(name)
		for i := 0; i < *burst; i++ {
			wg.Add(1)
			ready.Add(1)
			go func() {
				defer wg.Done()
				ready.Done()
				<-start // all goroutines open at the same moment
				s, err := p.sess.OpenStream()
				if errors.Is(err, yamux.ErrRemoteGoAway) || errors.Is(err, yamux.ErrSessionShutdown) || p.closedAfter(err) {
					atomic.AddInt32(&stopped, 1)
					return
				} else if err != nil {
					failf("burst: open: %v", err)
				}
				atomic.AddInt32(&opened, 1)
				payload := make([]byte, 5+1024)
				payload[0] = 'E'
				binary.BigEndian.PutUint32(payload[1:5], s.StreamID())
				if _, err := s.Write(payload); errors.Is(err, yamux.ErrConnectionReset) || errors.Is(err, yamux.ErrSessionShutdown) || p.closedAfter(err) {
					atomic.AddInt32(&refused, 1)
					return
				} else if err != nil {
					failf("burst stream %d: write: %v", s.StreamID(), err)
				}
				if err := s.Close(); err != nil {
					failf("burst stream %d: close: %v", s.StreamID(), err)
				}
			}()
		}
		ready.Wait()
		close(start)
		wg.Wait()
		pending.done(name)
	}
	emit(map[string]interface{}{
		"event": "burst_done", "rounds": rounds, "opened": opened,
		"open_refused": stopped, "write_refused": refused,
	})
}

// closedAfter tells whether err is the connection going away under a burst: once
// the peer has sent GoAway and finished its streams it closes the link, so a SYN
// still being written meets a closed socket. That ends the burst; it is not a
// failure, provided the session really is closed.
func (p *peer) closedAfter(err error) bool {
	if err == nil {
		return false
	}
	select {
	case <-p.sess.CloseChan():
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func (p *peer) ping() {
	rtt, err := p.sess.Ping()
	if err != nil {
		failf("ping: %v", err)
	}
	emit(map[string]interface{}{"event": "ping", "rtt_ms": float64(rtt) / float64(time.Millisecond)})
}

func (p *peer) open(command byte) *yamux.Stream {
	s, err := p.sess.OpenStream()
	if err != nil {
		failf("open '%c' stream: %v", command, err)
	}
	if _, err := s.Write([]byte{command}); err != nil {
		failf("stream %d: write command '%c': %v", s.StreamID(), command, err)
	}
	return s
}

func (p *peer) acceptLoop() {
	for {
		s, err := p.sess.AcceptStream()
		if err != nil {
			return // the session is over; the close watcher judges whether that was expected
		}
		go p.handleIncoming(s)
	}
}

func (p *peer) handleIncoming(s *yamux.Stream) {
	var cmd [1]byte
	if _, err := io.ReadFull(s, cmd[:]); err != nil {
		failf("stream %d: read command byte: %v", s.StreamID(), err)
	}
	switch cmd[0] {
	case 'B':
		if int(atomic.AddInt32(&p.bulkSeen, 1)) > *expectBulk {
			failf("stream %d: more than %d 'B' streams from the peer", s.StreamID(), *expectBulk)
		}
		name := fmt.Sprintf("bulk acceptor %d", s.StreamID())
		pending.add(name)
		p.bulk(s, "acceptor")
		pending.done(name)
		p.incoming.Done()
	case 'H':
		if int(atomic.AddInt32(&p.halfSeen, 1)) > *expectHalf {
			failf("stream %d: more than %d 'H' streams from the peer", s.StreamID(), *expectHalf)
		}
		name := fmt.Sprintf("half-close acceptor %d", s.StreamID())
		pending.add(name)
		p.halfAcceptor(s)
		pending.done(name)
		p.incoming.Done()
	case 'G':
		if p.client {
			failf("stream %d: 'G' stream opened by the TCP server; only the client opens it", s.StreamID())
		}
		p.goAwayAcceptor(s)
	default:
		failf("stream %d: unknown command byte %q", s.StreamID(), cmd[0])
	}
}

// writeRandom writes n pseudo-random bytes (seeded per stream) and returns their SHA-256.
func writeRandom(s *yamux.Stream, n int64, seed int64) (written int64, sum string, err error) {
	rng := rand.New(rand.NewSource(seed))
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for written < n {
		chunk := buf
		if left := n - written; left < int64(len(chunk)) {
			chunk = chunk[:left]
		}
		rng.Read(chunk)
		h.Write(chunk)
		m, werr := s.Write(chunk)
		written += int64(m)
		if werr != nil {
			return written, hex.EncodeToString(h.Sum(nil)), werr
		}
	}
	return written, hex.EncodeToString(h.Sum(nil)), nil
}

type received struct {
	n   int64
	sum string
	err error
}

func readAll(s *yamux.Stream, h hash.Hash) received {
	n, err := io.Copy(h, s)
	return received{n, hex.EncodeToString(h.Sum(nil)), err}
}

func (p *peer) seed(s *yamux.Stream) int64 {
	seed := int64(s.StreamID()) * 2
	if p.client {
		seed++
	}
	return seed
}

func (p *peer) bulk(s *yamux.Stream, role string) {
	id := s.StreamID()
	got := make(chan received, 1)
	go func() { got <- readAll(s, sha256.New()) }()
	sent, sentSum, err := writeRandom(s, *bulkSize, p.seed(s))
	if err != nil {
		failf("bulk stream %d (%s): write after %d bytes: %v", id, role, sent, err)
	}
	// Close only after EOF: this library's Read reports EOF once we have closed.
	r := <-got
	if r.err != nil {
		failf("bulk stream %d (%s): read after %d bytes: %v", id, role, r.n, r.err)
	}
	if r.n != *bulkSize {
		failf("bulk stream %d (%s): received %d bytes, expected %d", id, role, r.n, *bulkSize)
	}
	if err := s.Close(); err != nil {
		failf("bulk stream %d (%s): close: %v", id, role, err)
	}
	emit(map[string]interface{}{
		"event": "bulk", "stream": id, "role": role,
		"sent_bytes": sent, "sent_sha256": sentSum, "recv_bytes": r.n, "recv_sha256": r.sum,
	})
}

func (p *peer) halfOpener(s *yamux.Stream) {
	id := s.StreamID()
	sent, sentSum, err := writeRandom(s, *halfSize, p.seed(s))
	if err != nil {
		failf("half-close stream %d: write after %d bytes: %v", id, sent, err)
	}
	if err := s.Close(); err != nil {
		failf("half-close stream %d: close (FIN): %v", id, err)
	}
	reply := p.readAfterLocalClose(s, sha256.Size)
	replyHex := hex.EncodeToString(reply)
	if replyHex != sentSum {
		failf("half-close stream %d: peer replied sha256 %s, we sent %s", id, replyHex, sentSum)
	}
	emit(map[string]interface{}{
		"event": "half_close", "stream": id, "role": "opener",
		"sent_bytes": sent, "sent_sha256": sentSum, "reply_sha256": replyHex,
	})
}

// readAfterLocalClose reads exactly n bytes from a stream this side has
// already closed. This library version returns io.EOF from Read while the
// receive buffer is empty once the local side closed, so poll with back-off.
func (p *peer) readAfterLocalClose(s *yamux.Stream, n int) []byte {
	buf := make([]byte, n)
	got := 0
	pause := time.Millisecond
	for got < n {
		m, err := s.Read(buf[got:])
		got += m
		switch {
		case err == nil || m > 0:
			pause = time.Millisecond
		case err == io.EOF:
			if p.sess.IsClosed() {
				failf("stream %d: session closed after %d of %d reply bytes", s.StreamID(), got, n)
			}
			time.Sleep(pause)
			if pause < 20*time.Millisecond {
				pause *= 2
			}
		default:
			failf("stream %d: read reply after %d of %d bytes: %v", s.StreamID(), got, n, err)
		}
	}
	return buf
}

func (p *peer) halfAcceptor(s *yamux.Stream) {
	id := s.StreamID()
	r := readAll(s, sha256.New())
	if r.err != nil {
		failf("half-close stream %d: read after %d bytes: %v", id, r.n, r.err)
	}
	digest, _ := hex.DecodeString(r.sum)
	// The peer has half-closed; writing after its FIN must still work.
	if _, err := s.Write(digest); err != nil {
		failf("half-close stream %d: write reply after the peer's FIN: %v", id, err)
	}
	emit(map[string]interface{}{
		"event": "half_close", "stream": id, "role": "acceptor",
		"recv_bytes": r.n, "recv_sha256": r.sum,
	})
	if err := s.Close(); err != nil {
		failf("half-close stream %d: close: %v", id, err)
	}
}

func (p *peer) resetOpener(s *yamux.Stream) {
	id := s.StreamID()
	got := make(chan received, 1)
	go func() { got <- readAll(s, sha256.New()) }()
	sent, _, werr := writeRandom(s, 64<<20, p.seed(s))
	r := <-got
	if !errors.Is(werr, yamux.ErrConnectionReset) {
		failf("reset stream %d: Write returned %v after %d bytes, expected %q", id, werr, sent, yamux.ErrConnectionReset)
	}
	if !errors.Is(r.err, yamux.ErrConnectionReset) {
		failf("reset stream %d: Read returned %v after %d bytes, expected %q", id, r.err, r.n, yamux.ErrConnectionReset)
	}
	emit(map[string]interface{}{
		"event": "reset", "stream": id, "role": "opener", "sent_bytes": sent,
		"write_err": werr.Error(), "read_err": r.err.Error(),
	})
}

// goAwayOpener runs on the TCP client once its script is done.
func (p *peer) goAwayOpener() {
	pending.add("go-away opener")
	s := p.open('G')
	id := s.StreamID()
	var ack [1]byte
	if _, err := io.ReadFull(s, ack[:]); err != nil {
		failf("go-away stream %d: read the acceptor's 'A': %v", id, err)
	}
	if ack[0] != 'A' {
		failf("go-away stream %d: expected 'A', got %q", id, ack[0])
	}
	// The peer's GoAway frame preceded the 'A' on the wire.
	if _, err := p.sess.OpenStream(); !errors.Is(err, yamux.ErrRemoteGoAway) {
		failf("go-away stream %d: OpenStream after the peer's GoAway returned %v, expected %q", id, err, yamux.ErrRemoteGoAway)
	}
	openErr := yamux.ErrRemoteGoAway.Error()
	if err := p.sess.GoAway(); err != nil {
		failf("go-away stream %d: send GoAway: %v", id, err)
	}
	if _, err := s.Write([]byte{'K'}); err != nil {
		failf("go-away stream %d: write 'K': %v", id, err)
	}
	emit(map[string]interface{}{
		"event": "goaway", "stream": id, "role": "opener", "open_after_remote_goaway": openErr,
		"sent_goaway": true,
	})
	atomic.StoreInt32(&p.goAwayDone, 1)
	pending.done("go-away opener")
	if err := s.Close(); err != nil {
		failf("go-away stream %d: close: %v", id, err)
	}
}

// goAwayAcceptor runs on the TCP server when the client opens the 'G' stream.
func (p *peer) goAwayAcceptor(s *yamux.Stream) {
	id := s.StreamID()
	pending.add("go-away acceptor")
	<-p.scriptDone
	if err := p.sess.GoAway(); err != nil {
		failf("go-away stream %d: send GoAway: %v", id, err)
	}
	if _, err := s.Write([]byte{'A'}); err != nil {
		failf("go-away stream %d: write 'A': %v", id, err)
	}
	rest, err := ioutil.ReadAll(s)
	if err != nil {
		failf("go-away stream %d: read the opener's 'K': %v", id, err)
	}
	if !bytes.Equal(rest, []byte{'K'}) {
		failf("go-away stream %d: expected 'K' then EOF, got %q", id, rest)
	}
	_, openErr := p.sess.OpenStream()
	if !errors.Is(openErr, yamux.ErrRemoteGoAway) {
		failf("go-away stream %d: OpenStream after the peer's GoAway returned %v, expected %q", id, openErr, yamux.ErrRemoteGoAway)
	}
	emit(map[string]interface{}{
		"event": "goaway", "stream": id, "role": "acceptor", "open_after_remote_goaway": openErr.Error(),
		"sent_goaway": true,
	})
	atomic.StoreInt32(&p.goAwayDone, 1)
	pending.done("go-away acceptor")
	if err := s.Close(); err != nil && !strings.Contains(err.Error(), "closed") {
		failf("go-away stream %d: close: %v", id, err)
	}
}
