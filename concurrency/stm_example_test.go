package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"strconv"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/batonhq/baton/concurrency"
	"github.com/batonhq/baton/embedded"
)

// stmExampleClient starts an embedded etcd for an example and dials it;
// a real program dials its cluster.
func stmExampleClient() (*clientv3.Client, func()) {
	srv, err := embedded.Start(embedded.Config{})
	if err != nil {
		log.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	return cli, func() { cli.Close(); srv.Close() }
}

// etcd's documented bank-transfer example, run on this package (etcd's
// code compiles here with only its import path changed): five accounts of
// 100, ten concurrent transactions that each move half of one account's
// balance to another. Conflicting transfers are retried, so no money is
// created or lost.
func ExampleNewSTM() {
	cli, stop := stmExampleClient()
	defer stop()
	ctx := context.Background()

	const accounts = 5
	for i := range accounts {
		if _, err := cli.Put(ctx, fmt.Sprintf("accts/%d", i), "100"); err != nil {
			log.Fatal(err)
		}
	}

	exchange := func(stm concurrency.STM) error {
		from, to := rand.IntN(accounts), rand.IntN(accounts)
		if from == to {
			return nil // nothing to move
		}
		fromK, toK := fmt.Sprintf("accts/%d", from), fmt.Sprintf("accts/%d", to)
		var fromV, toV int
		fmt.Sscanf(stm.Get(fromK), "%d", &fromV)
		fmt.Sscanf(stm.Get(toK), "%d", &toV)
		moved := fromV / 2
		stm.Put(fromK, fmt.Sprint(fromV-moved))
		stm.Put(toK, fmt.Sprint(toV+moved))
		return nil
	}

	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := concurrency.NewSTM(cli, exchange); err != nil {
				log.Fatal(err)
			}
		}()
	}
	wg.Wait()

	resp, err := cli.Get(ctx, "accts/", clientv3.WithPrefix())
	if err != nil {
		log.Fatal(err)
	}
	sum := 0
	for _, kv := range resp.Kvs {
		var v int
		fmt.Sscanf(string(kv.Value), "%d", &v)
		sum += v
	}
	fmt.Println("account sum is", sum)
	// Output:
	// account sum is 500
}

// A range read that stays serializable: the transaction books a room only
// if nobody holds it. A booking inserted by someone else between the read
// and the commit makes the commit fail and apply run again, where it sees
// the booking.
func ExampleRangeSTM() {
	cli, stop := stmExampleClient()
	defer stop()
	errTaken := errors.New("room taken")

	book := func(who string) error {
		_, err := concurrency.NewSTM(cli, func(stm concurrency.STM) error {
			bookings := stm.(concurrency.RangeSTM).GetPrefix("rooms/101/")
			if len(bookings) > 0 {
				return fmt.Errorf("%w by %s", errTaken, bookings[0].Value)
			}
			stm.Put("rooms/101/"+who, who)
			return nil
		})
		return err
	}
	fmt.Println(book("alice"))
	fmt.Println(book("bob"))
	// Output:
	// <nil>
	// room taken by alice
}

// Bounded retries: a counter incremented by many writers at once, each
// giving up after three conflicting attempts. The error says how many
// attempts were made; the increments that did commit are all counted.
func ExampleWithMaxAttempts() {
	cli, stop := stmExampleClient()
	defer stop()

	var wg sync.WaitGroup
	var mu sync.Mutex
	committed, gaveUp := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := concurrency.NewSTM(cli, func(stm concurrency.STM) error {
				n, _ := strconv.Atoi(stm.Get("counter"))
				stm.Put("counter", strconv.Itoa(n+1))
				return nil
			}, concurrency.WithMaxAttempts(3))
			mu.Lock()
			defer mu.Unlock()
			var ae *concurrency.STMAttemptsError
			switch {
			case err == nil:
				committed++
			case errors.As(err, &ae) && ae.Attempts == 3:
				gaveUp++
			default:
				log.Fatal(err)
			}
		}()
	}
	wg.Wait()

	resp, err := cli.Get(context.Background(), "counter")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("every transaction committed or gave up:", committed+gaveUp == 8)
	fmt.Println("counter matches the commits:", string(resp.Kvs[0].Value) == strconv.Itoa(committed))
	// Output:
	// every transaction committed or gave up: true
	// counter matches the commits: true
}
