//! `store-gc`: a garbage collector for Nix stores that runs as the store's owner, gets its
//! roots from root-tracker, and decides what is dead exactly as Nix 2.8's `collectGarbage` does.
//!
//! Data flow, one module per step: [`layout`] and [`nix_conf`] say where and how;
//! [`tracker_client`] and [`temp_roots`] find the roots ([`roots`] judges whether they can be
//! trusted); [`store_db`] loads the Nix database once into a [`graph`]; [`store_listing`] reads
//! the store directory ahead for runs that delete nothing; [`liveness`] splits the store into
//! alive and dead; [`delete`] removes the dead while [`gc_lock`] is held and
//! [`gc_socket`] takes new temp roots; [`collect`] runs the phases and reports; [`serve`]
//! runs collections as a daemon and exports [`metrics`] (with [`tracker_status`]); [`cli`] is
//! the edge.

pub mod cli;
pub mod collect;
pub mod delete;
pub mod gc_lock;
pub mod gc_socket;
pub mod graph;
pub mod layout;
pub mod liveness;
pub mod metrics;
pub mod nix_conf;
pub mod progress;
pub mod roots;
pub mod serve;
pub mod store_db;
pub mod store_listing;
pub mod store_path;
pub mod temp_roots;
pub mod tracker_client;
pub mod tracker_status;
