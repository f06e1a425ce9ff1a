// Package concurrency implements distributed coordination on etcd v3:
// sessions, mutexes, leader election and software transactional memory, with
// the same API as go.etcd.io/etcd/client/v3/concurrency, so that code written
// for etcd's package moves here by changing one import path.
package concurrency
