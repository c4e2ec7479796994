// A task's result is stored for `join`: it must derive Serialize and Deserialize.

pub struct Report {
    pub pages: u32,
}

#[castor_abi::task(thread)]
pub fn render() -> Report {
    Report { pages: 3 }
}

fn main() {}
