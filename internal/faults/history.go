//go:build linux

package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Record types of a history file.
const (
	recInvoke  = "invoke"  // the operation is about to be sent
	recOK      = "ok"      // it completed and took effect (or, for a read, returned)
	recFail    = "fail"    // it completed and certainly took no effect
	recUnknown = "unknown" // it was sent and its answer was lost
	recEvent   = "event"   // not an operation: a fact a checker or the parent uses
)

// Record is one line of a worker's history file. Only the fields an
// operation needs are set.
type Record struct {
	Type   string  `json:"type"`
	Worker int     `json:"w"`
	ID     int64   `json:"id"`
	F      string  `json:"f"`
	Time   int64   `json:"t"` // wall clock, Unix ns: comparable across processes on one machine
	Val    string  `json:"val,omitempty"`
	Prev   string  `json:"prev,omitempty"`
	Tok    int64   `json:"tok,omitempty"`
	From   int     `json:"from,omitempty"`
	To     int     `json:"to,omitempty"`
	Amt    int64   `json:"amt,omitempty"`
	TxID   string  `json:"tx,omitempty"`
	Bal    []int64 `json:"bal,omitempty"`
	Err    string  `json:"err,omitempty"`
}

// recorder appends records to a worker's history file. Every completion
// and event is fsynced before the worker goes on, so that a worker killed
// or paused leaves a history the parent can read up to its last step.
type recorder struct {
	mu     sync.Mutex
	f      *os.File
	worker int
	next   int64
}

func newRecorder(path string, worker int) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &recorder{f: f, worker: worker}, nil
}

func (r *recorder) write(rec *Record, sync bool) error {
	rec.Worker = r.worker
	rec.Time = time.Now().UnixNano()
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := r.f.Write(b); err != nil {
		return err
	}
	if sync {
		return r.f.Sync()
	}
	return nil
}

// invoke records the start of an operation and returns its id. The record
// is written (not fsynced: a lost invoke record also loses the operation's
// effect only if the worker died before sending, which the completion's
// absence already covers) before the request is sent.
func (r *recorder) invoke(rec Record) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	rec.ID = r.next
	rec.Type = recInvoke
	if err := r.write(&rec, true); err != nil {
		panic(fmt.Sprintf("faults: write history: %v", err))
	}
	return rec.ID
}

// complete records the outcome of operation id.
func (r *recorder) complete(id int64, typ string, rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec.ID = id
	rec.Type = typ
	if err := r.write(&rec, true); err != nil {
		panic(fmt.Sprintf("faults: write history: %v", err))
	}
}

// event records a fact that is not an operation.
func (r *recorder) event(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec.Type = recEvent
	if err := r.write(&rec, true); err != nil {
		panic(fmt.Sprintf("faults: write history: %v", err))
	}
}

func (r *recorder) close() error { return r.f.Close() }

// tail reads a history file as it grows. It returns only complete lines.
type tail struct {
	path string
	off  int64
	part []byte
}

func (t *tail) poll() ([]Record, error) {
	f, err := os.Open(t.path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	t.off += int64(len(b))
	b = append(t.part, b...)
	t.part = nil
	var out []Record
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			t.part = append([]byte(nil), b...)
			break
		}
		var r Record
		if err := json.Unmarshal(b[:i], &r); err != nil {
			return out, fmt.Errorf("faults: %s: bad record %q: %w", t.path, b[:i], err)
		}
		out = append(out, r)
		b = b[i+1:]
	}
	return out, nil
}

// readHistory reads a whole history file. A torn last line (the worker was
// killed while writing it) is ignored.
func readHistory(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// Op is one operation rebuilt from a history: its invoke record, and its
// completion (Type recUnknown, with End 0, when none was written).
type Op struct {
	Worker int
	ID     int64
	F      string
	Start  int64
	End    int64 // 0 when the outcome is unknown and no record says when
	Status string
	In     Record
	Out    Record
}

// ops pairs invoke and completion records, and returns events separately.
func ops(recs []Record) (out []*Op, events []Record) {
	open := map[[2]int64]*Op{}
	for _, r := range recs {
		k := [2]int64{int64(r.Worker), r.ID}
		switch r.Type {
		case recInvoke:
			op := &Op{Worker: r.Worker, ID: r.ID, F: r.F, Start: r.Time, Status: recUnknown, In: r}
			open[k] = op
			out = append(out, op)
		case recOK, recFail, recUnknown:
			if op, ok := open[k]; ok {
				op.Status, op.Out = r.Type, r
				if r.Type != recUnknown {
					op.End = r.Time
				}
				delete(open, k)
			}
		case recEvent:
			events = append(events, r)
		}
	}
	return out, events
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
