use tch::{Device, Kind, Tensor};

use super::*;

#[test]
fn a_key_runs_eagerly_first_and_stays_eager_where_recording_fails() {
    // No machine that runs the suite has a GPU, so recording fails here (no device, or no
    // shim): the first pass is eager, the second tries to record, and from then on the key is
    // eager for good, with every result right.
    let graphs: Graphs<i64> = Graphs::default();
    let calls = std::cell::Cell::new(0);
    let pass = |x: &Tensor| {
        calls.set(calls.get() + 1);
        x.f_mul_scalar(2.0)
    };
    let x = Tensor::arange(6, (Kind::Float, Device::Cpu));
    assert_eq!(graphs.step(&3), Step::Eager);
    for round in 0..3 {
        let y = graphs.run(3, 0, &x, pass).unwrap();
        assert!(y.equal(&x.f_mul_scalar(2.0).unwrap()), "round {round}");
        assert_eq!(graphs.step(&3), if round == 0 { Step::Record } else { Step::Eager });
    }
    assert_eq!(calls.get(), 3, "the failed recording ran its pass eagerly once, not twice");
    let (recorded, failed) = graphs.summary();
    assert_eq!(recorded, 0);
    assert!(failed.is_some_and(|why| why.contains("CUDA graph")), "the failure's reason is kept");
    // Other keys keep their own state; clearing forgets all.
    assert_eq!(graphs.step(&4), Step::Eager);
    graphs.clear();
    let _again = graphs.run(3, 0, &x, pass).unwrap();
    assert_eq!(graphs.step(&3), Step::Record);
}

#[test]
fn without_a_gpu_recording_is_an_error_not_a_crash() {
    let ran = std::cell::Cell::new(false);
    let err = Graph::record(0, None, || {
        ran.set(true);
        Ok(())
    })
    .err()
    .expect("no GPU here");
    assert!(err.to_string().contains("CUDA graph"), "{err}");
    assert!(!ran.get(), "nothing is recorded when the capture cannot start");
    assert!(current_stream(0).is_null());
    assert!(SideStream::enter(Device::Cpu).is_none(), "the CPU has no streams");
    assert!(SideStream::enter(Device::Cuda(0)).is_none(), "no GPU here: the work stays where it is");
    let err = blocking_waits(0).expect_err("no GPU here");
    assert!(err.to_string().contains("waits on the GPU") || err.to_string().contains("without CUDA graphs"), "{err}");
}

#[test]
fn only_an_enabled_cuda_device_records() {
    assert_eq!(wanted(Device::Cpu), None);
    set_enabled(false);
    assert_eq!(wanted(Device::Cuda(0)), None);
}
