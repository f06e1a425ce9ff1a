package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/batonhq/baton/concurrency"
)

// A coordinator holds a barrier while it prepares; workers wait on it and
// all go once it is released.
func ExampleBarrier() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	gate := concurrency.NewBarrier(cli, "/deploy/gate")
	if err := gate.Hold(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("held:", errors.Is(gate.TryWait(ctx), concurrency.ErrBarrierHeld))

	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := concurrency.NewBarrier(cli, "/deploy/gate").Wait(ctx); err != nil {
				log.Fatal(err)
			}
		}()
	}
	if err := gate.Release(ctx); err != nil {
		log.Fatal(err)
	}
	wg.Wait()
	fmt.Println("all 3 workers went through")
	// Output:
	// held: true
	// all 3 workers went through
}

// Three workers start a phase together and finish it together.
func ExampleDoubleBarrier() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	var mu sync.Mutex
	entered, left := 0, 0
	var wg sync.WaitGroup
	for range 3 {
		s, err := concurrency.NewSession(cli)
		if err != nil {
			log.Fatal(err)
		}
		defer s.Close()
		b := concurrency.NewDoubleBarrier(s, "/phase", 3)
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			entered++
			mu.Unlock()
			if err := b.Enter(ctx); err != nil {
				log.Fatal(err)
			}
			mu.Lock()
			if entered != 3 {
				log.Fatalf("entered with %d of 3", entered)
			}
			left++
			mu.Unlock()
			if err := b.Leave(ctx); err != nil {
				log.Fatal(err)
			}
			mu.Lock()
			if left != 3 {
				log.Fatalf("left with %d of 3", left)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	fmt.Println("3 workers entered together and left together")

	s, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	alone := concurrency.NewDoubleBarrier(s, "/phase", 3)
	fmt.Println(alone.TryEnter(ctx))
	// Output:
	// 3 workers entered together and left together
	// doublebarrier: not all participants have entered
}

// A semaphore with 4 permits shared by every process using "/gpu": a job
// takes as many as it needs, and a caller that cannot wait tries instead.
func ExampleSemaphore() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	s, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	gpus := concurrency.NewSemaphore(s, "/gpu", 4)

	if err := gpus.Acquire(ctx, 3); err != nil {
		log.Fatal(err)
	}
	fmt.Println("holding", gpus.Held(), "fencing token > 0:", gpus.Rev() > 0)

	s2, err := concurrency.NewSession(cli)
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Close()
	other := concurrency.NewSemaphore(s2, "/gpu", 4)
	fmt.Println(other.TryAcquire(ctx, 2))
	fmt.Println(other.Acquire(ctx, 5))

	if err := gpus.Release(ctx, 3); err != nil {
		log.Fatal(err)
	}
	fmt.Println(other.TryAcquire(ctx, 2), other.Held())
	// Output:
	// holding 3 fencing token > 0: true
	// semaphore: not enough permits free
	// semaphore: n must be > 0 and <= the limit (n 5, limit 4)
	// <nil> 2
}

// Readers share the lock; a writer waits for them, and readers that come
// after a waiting writer wait for it.
func ExampleRWMutex() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	session := func() *concurrency.Session {
		s, err := concurrency.NewSession(cli)
		if err != nil {
			log.Fatal(err)
		}
		return s
	}
	s1, s2 := session(), session()
	defer s1.Close()
	defer s2.Close()
	reader := concurrency.NewRWMutex(s1, "/config")
	writer := concurrency.NewRWMutex(s2, "/config")

	if err := reader.RLock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read-locked; TryLock:", writer.TryLock(ctx))

	locked := make(chan error, 1)
	go func() { locked <- writer.Lock(ctx) }()
	if err := reader.RUnlock(ctx); err != nil {
		log.Fatal(err)
	}
	if err := <-locked; err != nil {
		log.Fatal(err)
	}
	fmt.Println("write-locked after the reader left")
	if err := writer.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// read-locked; TryLock: mutex: Locked by another session
	// write-locked after the reader left
}

// Producers and consumers share a queue; each item goes to one consumer.
func ExampleQueue() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	jobs := concurrency.NewQueue(cli, "/jobs")
	for _, job := range []string{"build", "test", "ship"} {
		if err := jobs.Enqueue(ctx, job); err != nil {
			log.Fatal(err)
		}
	}
	for range 3 {
		job, err := jobs.Dequeue(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(job)
	}
	_, err := jobs.TryDequeue(ctx)
	fmt.Println(err)
	// Output:
	// build
	// test
	// ship
	// queue: empty
}

// Lower priority values come out first; equal priorities in order.
func ExamplePriorityQueue() {
	srv, cli := exampleServer()
	defer srv.Close()
	defer cli.Close()
	ctx := context.Background()

	q := concurrency.NewPriorityQueue(cli, "/alerts")
	for _, a := range []struct {
		msg string
		pr  uint16
	}{{"disk 80%", 5}, {"node down", 0}, {"disk 90%", 5}, {"cert expires", 3}} {
		if err := q.Enqueue(ctx, a.msg, a.pr); err != nil {
			log.Fatal(err)
		}
	}
	for range 4 {
		msg, err := q.Dequeue(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(msg)
	}
	// Output:
	// node down
	// cert expires
	// disk 80%
	// disk 90%
}
