// A concurrency limit of zero would never run the task.

#[castor_abi::task(thread, concurrency = 0)]
pub fn charge(amount: i64) {
    let _ = amount;
}

fn main() {}
